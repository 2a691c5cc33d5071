"""Training the teacher on hard labels and distilling the four students from it.

The transformer learns from the labels alone. Every other variant learns from
the labels, the teacher's softened output and the teacher's pooled features
(the seed's §7.2):

``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE + beta * MSE(P f_s, f_t)``

at temperature T = 2, where ``f_s`` is the student's pooled representation,
``f_t`` the teacher's (standardised per dimension) and ``P`` a linear
projection learnt alongside the student and dropped afterwards (a FitNets
"regressor"). The weights kept are those of the epoch with the best
validation accuracy, so the test split stays untouched until the manifest
scores it. Training frames get a random exposure gain (``Recipe.exposure``),
the usual photometric augmentation: a model that only ever saw one
brightness fails on the first dimmer lamp, which is not the drift the night
shift's illumination normalisation is there for.

References: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
Network", 2015; Romero et al., "FitNets: Hints for Thin Deep Nets", 2015.

>>> from morph.zoo.data import InspectionTask, load_split
>>> import torch
>>> torch.manual_seed(0) and None
>>> task = InspectionTask(train=40, val=20, test=5)
>>> tiny = Recipe(epochs=2, lr=3e-3)
>>> result = fit(make_model("snn"), load_split("train", task), load_split("val", task), tiny)
>>> result.epochs, 0.0 <= result.val_accuracy <= 1.0
(2, True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from morph.zoo.data import InspectionSplit
from morph.zoo.models import make_model  # noqa: F401  (doctest, and the usual companion)

TEMPERATURE = 2.0


@dataclass(frozen=True)
class Recipe:
    """How one variant is trained."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 1e-4
    temperature: float = TEMPERATURE
    alpha: float = 0.7          # weight of the soft-target term; 1 - alpha on the labels
    beta: float = 1.0           # weight of the feature-matching term
    #: Exposure augmentation: each training frame's brightness is scaled by a gain drawn
    #: uniformly from [1 - exposure, 1 + exposure] (a camera's auto-exposure and the lamps'
    #: ageing vary it on the line); 0 turns it off.
    exposure: float = 0.25

    def scaled(self, epoch_factor: float) -> Recipe:
        """The same recipe with ``epoch_factor`` times the epochs (at least 1): for reduced zoos."""
        return replace(self, epochs=max(1, round(self.epochs * epoch_factor)))


#: Tuned on the validation split, within the build budget (``liquid zoo build`` <= 6 min on 2 cores):
#: the teacher trains longest, so that it is the best model and the students learn from it.
RECIPES = {
    "transformer": Recipe(epochs=20, lr=4e-3),
    "lstm": Recipe(epochs=10, lr=8e-3),
    "cnn": Recipe(epochs=12, lr=8e-3),
    "mobilenet": Recipe(epochs=10, lr=1e-2),
    "snn": Recipe(epochs=30, lr=1e-2),     # the cheapest to train, and the slowest to converge
}


@dataclass(frozen=True)
class TeacherTargets:
    """What a student is distilled from: the teacher's logits and standardised features, one row per example."""

    logits: torch.Tensor
    features: torch.Tensor


@dataclass
class TrainResult:
    model: nn.Module
    val_accuracy: float
    epochs: int
    seconds: float


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x))


def _expose(frames: torch.Tensor, exposure: float, gen: torch.Generator) -> torch.Tensor:
    """``frames`` each scaled by a random exposure gain in [1 - exposure, 1 + exposure], clipped to [0, 1].
    The label and the teacher's answer do not depend on the exposure, so distillation
    targets computed on the frames as shot still hold."""
    if exposure <= 0:
        return frames
    gain = 1.0 + exposure * (2.0 * torch.rand(len(frames), 1, 1, generator=gen) - 1.0)
    return (frames * gain).clamp_(0.0, 1.0)


def accuracy(model: nn.Module, split: InspectionSplit, batch_size: int = 500) -> float:
    """Accuracy of the torch model (eval mode) on ``split``."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(_tensor(split.x[i:i + batch_size])).argmax(dim=1)
                          for i in range(0, len(split), batch_size)]).numpy()
    return float((pred == split.y).mean())


def teacher_targets(teacher: nn.Module, split: InspectionSplit, batch_size: int = 500) -> TeacherTargets:
    """The teacher's logits and features on ``split``, computed once (eval mode, so fixed)."""
    teacher.eval()
    with torch.no_grad():
        feats = torch.cat([teacher.features(_tensor(split.x[i:i + batch_size]))
                           for i in range(0, len(split), batch_size)])
        logits = teacher.head(feats)
    feats = (feats - feats.mean(dim=0)) / (feats.std(dim=0) + 1e-6)
    return TeacherTargets(logits, feats)


def distillation_loss(student_logits, labels, recipe: Recipe, teacher_logits=None,
                      projected=None, teacher_features=None):
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None:
        return hard
    t = recipe.temperature
    # T^2 keeps the soft term's gradients on the same scale as the hard term's.
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t
    loss = recipe.alpha * soft + (1 - recipe.alpha) * hard
    if projected is not None:
        loss = loss + recipe.beta * F.mse_loss(projected, teacher_features)
    return loss


def fit(model: nn.Module, train: InspectionSplit, val: InspectionSplit, recipe: Recipe,
        teacher: TeacherTargets | None = None, seed: int = 0, match_features: bool = True) -> TrainResult:
    """Train ``model`` on ``train`` (distilling when ``teacher`` targets are given, one
    row per training example; matching features too unless ``match_features`` is off);
    returns it with the best validation weights loaded."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x, y = _tensor(train.x), _tensor(train.y)
    project = None
    if teacher is not None and match_features:
        project = nn.Linear(model.feature_dim, teacher.features.shape[1])
    params = list(model.parameters()) + (list(project.parameters()) if project is not None else [])
    steps_per_epoch = -(-len(y) // recipe.batch_size)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, epochs=recipe.epochs,
                                                steps_per_epoch=steps_per_epoch)
    best_acc, best_state = -1.0, None
    for _ in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            feats = model.features(_expose(x[idx], recipe.exposure, gen))
            logits = model.head(feats)
            if teacher is None:
                loss = distillation_loss(logits, y[idx], recipe)
            else:
                loss = distillation_loss(logits, y[idx], recipe, teacher.logits[idx],
                                         project(feats) if project is not None else None, teacher.features[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, val)
        if acc >= best_acc:  # ties go to the later, better-converged epoch
            best_acc = acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_acc, recipe.epochs, time.perf_counter() - start)
