"""Training and export of zoo models on a small setting: distillation pays, exports match torch per precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morph.zoo import runtime
from morph.zoo.data import InspectionTask, load_split
from morph.zoo.export import to_fp16, to_int8, to_int8_static, to_onnx
from morph.zoo.models import make_model, no_fastpath
from morph.zoo.train import Recipe, fit, teacher_targets

SMALL = InspectionTask(train=800, val=500, test=500)


@pytest.fixture(scope="module")
def small():
    return tuple(load_split(s, SMALL) for s in ("train", "val", "test"))


@pytest.fixture(scope="module")
def teacher(small):
    train, val, _ = small
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return fit(make_model("cnn"), train, val, Recipe(epochs=12, lr=1e-2), seed=0).model


def test_distillation_improves_a_student_over_training_it_alone(small, teacher):
    """The same student, seeds and epochs, with and without the teacher's logits and features."""
    train, val, test = small
    targets = teacher_targets(teacher, train)
    recipe = Recipe(epochs=8, lr=1e-2)
    gains = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        alone = fit(make_model("snn"), train, val, recipe, seed=seed).model
        torch.manual_seed(seed)
        taught = fit(make_model("snn"), train, val, recipe, teacher=targets, seed=seed).model
        x = torch.from_numpy(np.array(test.x))
        with torch.no_grad():
            gains.append(float((taught(x).argmax(1).numpy() == test.y).mean())
                         - float((alone(x).argmax(1).numpy() == test.y).mean()))
    assert min(gains) > 0 and np.mean(gains) > 0.02, gains


def _torch_logits(model, x):
    model.eval()
    with torch.no_grad(), no_fastpath():
        return model(torch.from_numpy(np.array(x))).numpy()


def test_exported_models_agree_with_torch_within_tolerance_per_precision(small, teacher, tmp_path):
    train, _, test = small
    ref = _torch_logits(teacher, test.x)
    fp32 = to_onnx(teacher, tmp_path / "cnn-fp32.onnx")
    fp16, _ = to_fp16(fp32, tmp_path / "cnn-fp16.onnx")
    dynamic = to_int8(fp32, tmp_path / "cnn-int8.onnx")
    static = to_int8_static(fp32, tmp_path / "cnn-int8-static.onnx", train.x[:128])
    scale = float(np.abs(ref).max())
    for path, max_rel_diff, min_agreement in ((fp32, 1e-5, 1.0), (fp16, 2e-2, 0.98),
                                              (dynamic, None, 0.9), (static, None, 0.9)):
        out = runtime.logits(runtime.open_session(path), test.x)
        agreement = float((out.argmax(1) == ref.argmax(1)).mean())
        assert agreement >= min_agreement, (path.name, agreement)
        if max_rel_diff is not None:
            assert float(np.abs(out - ref).max()) <= max_rel_diff * scale + 1e-6, path.name
