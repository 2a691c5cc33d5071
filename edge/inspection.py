"""The reference workflow: visual inspection of production lots on an edge node.

ingest -> preprocess -> infer -> quality gate -> (re-inspection) -> postprocess -> output,
on the node's served model (`ServedClassifier`, the morph variant serving now).
Costs that stand for I/O are sleeps (`InspectionCosts`); inference,
re-inspection and opening a replica session are real computation.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Protocol

import numpy as np

from edge.runtime import Alternative, Step, StepContext, WorkflowSpec
from edge.serving import softmax
from morph.zoo import runtime
from morph.zoo.data import N_CLASSES, input_shape, load_split
from morph.zoo.lighting import normalise_illumination


class Classifier(Protocol):
    """The model the inspection pipeline runs: logits for a float32 batch of frames [N, *zoo input shape]."""

    @property
    def identity(self) -> str: ...  # changes when the model serving changes (a morph swap)

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def replica(self) -> Replica: ...  # a separate, warmed instance of the current model (costly to make)


@dataclass(frozen=True)
class Replica:
    """A model instance of its own (for re-inspection), and which model it is."""

    identity: str
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)


class ServedClassifier:
    """The current morph variant of an `edge.serving.InferenceServer`; replicas are new ONNX Runtime sessions.

    A replica is opened from the manifest's file of the variant serving now and
    warmed, which is the real cost of getting a second session ready (about
    1 ms for the cnn, 17 ms for the transformer on this machine).
    """

    def __init__(self, server, warmup_runs: int = 2):
        self.server, self.warmup_runs = server, warmup_runs

    @property
    def identity(self) -> str:
        current = self.server.current
        return f"{current.variant}/{current.precision}/{current.sha256[:16]}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.server.infer(batch).logits

    def replica(self) -> Replica:
        current = self.server.current
        manifest = self.server.manifest
        blob = (manifest.root / manifest.entry(current.variant, current.precision).path).read_bytes()
        if hashlib.sha256(blob).hexdigest() != current.sha256:
            raise RuntimeError("the model file changed on disk since it was verified")
        session = runtime.open_session(blob, 1)
        for _ in range(self.warmup_runs):
            session.run(None, {runtime.INPUT: np.zeros((8, *manifest.input_shape), np.float32)})
        identity = f"{current.variant}/{current.precision}/{current.sha256[:16]}"
        return Replica(identity, lambda x: session.run(None, {runtime.INPUT: np.ascontiguousarray(x, np.float32)})[0])


class ReplicaResource:
    """The re-inspection's own model instance: acquiring it opens and warms a replica of the current model."""

    name = "replica-session"

    def __init__(self, model: Classifier):
        self.model = model

    def acquire(self, ctx: StepContext) -> Replica:
        return self.model.replica()

    def release(self, handle: Replica) -> None:
        pass  # the session is freed with its last reference


@dataclass(frozen=True)
class InspectionCosts:
    """Sleep-based costs (ms) of the inspection pipeline, each standing for I/O; all other work is real.

    * ``camera_read_ms`` — ingest reads the lot's frames from the camera buffer;
    * ``calibration_fetch_ms`` — preprocess loads the camera's flat-field from the config service;
    * ``validation_ms`` — the quality gate's round trip to a remote validation service;
    * ``reference_fetch_ms`` — postprocess loads the lot's reference images from the product database;
    * ``render_ms`` — postprocess renders the annotated report images (the numpy part is real but < 1 ms);
    * ``sink_write_ms`` — output writes the report to the results store.

    Inference and re-inspection are real computation (ONNX Runtime or numpy),
    and so is opening the re-inspection's replica session.
    """

    camera_read_ms: float = 12.0
    calibration_fetch_ms: float = 12.0
    validation_ms: float = 40.0
    reference_fetch_ms: float = 20.0
    render_ms: float = 8.0
    sink_write_ms: float = 3.0

    def scaled(self, factor: float) -> InspectionCosts:
        return InspectionCosts(*(getattr(self, f) * factor for f in self.__dataclass_fields__))


#: The camera's vignetting: frames are darker towards the corners; the flat-field undoes it.
_VIGNETTE = (1.0 - 0.15 * np.hypot(*np.meshgrid(*(np.linspace(-1, 1, n) for n in input_shape()))) / math.sqrt(2)
             ).astype(np.float32)


def inspection_lots(n: int, seed: int = 0, batch: int = 16, noisy_share: float = 0.25,
                    noise: tuple[float, float] = (0.25, 0.4)) -> list[dict[str, np.ndarray]]:
    """Inputs of ``n`` inspection runs: lots of ``batch`` frames (the zoo's test split) as the camera delivers them (uint8).

    Most lots are shot in good light (sensor noise σ 0.02); a ``noisy_share``
    of them in poor light (σ drawn from ``noise``), which lowers the model's
    confidence and so sends the run through re-inspection. Whether a given run
    does depends on its images, not on anything the run's prefix shows.
    """
    test = load_split("test")
    rng = np.random.default_rng(seed)
    lots = []
    for _ in range(n):
        idx = rng.choice(len(test), size=batch, replace=False)
        sigma = rng.uniform(*noise) if rng.random() < noisy_share else 0.02
        frames = test.x[idx] * _VIGNETTE + rng.normal(0.0, sigma, size=(batch, *test.x.shape[1:]))
        lots.append({"lot": np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)})
    return lots


def _test_time_augmented(replica: Replica, tensor: np.ndarray) -> np.ndarray:
    """Class probabilities averaged over the frames and their one-pixel shifts (test-time augmentation)."""
    views = [tensor] + [np.roll(tensor, s, axis=a) for a in (1, 2) for s in (-1, 1)]
    return softmax(replica.run(np.concatenate(views))).reshape(len(views), len(tensor), -1).mean(axis=0)


def _class_references() -> np.ndarray:
    """The product database's reference image of each class: the class mean of the train split."""
    train = load_split("train")
    return np.stack([train.x[train.y == c].mean(axis=0) for c in range(N_CLASSES)]).astype(np.float32)


def _report(scores: np.ndarray, tensor: np.ndarray, reference: np.ndarray, confidence_floor: float) -> bytes:
    """The lot's report (JSON bytes): label, confidence and match against the label's reference image per frame."""
    labels, conf = scores.argmax(axis=1), scores.max(axis=1)
    a = tensor.reshape(len(tensor), -1) - tensor.reshape(len(tensor), -1).mean(axis=1, keepdims=True)
    b = reference[labels].reshape(len(labels), -1)
    b = b - b.mean(axis=1, keepdims=True)
    match = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-9)
    report = [{"i": i, "label": int(labels[i]), "confidence": round(float(conf[i]), 4),
               "match": round(float(match[i]), 4),
               "status": "ok" if conf[i] >= confidence_floor and match[i] >= 0.5 else "review"}
              for i in range(len(labels))]
    return json.dumps(report, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class PipelineMode:
    """Which optional stages run; a morph command's ``pipeline`` sets it while runs go on.

    ``skip-preprocess`` feeds the frames to the model without the flat-field
    correction: no calibration fetch and no division, at some accuracy on
    vignetted frames (the learned agent's pipeline-modification action).
    ``illumination-normalisation`` runs the full pipeline and then normalises
    the frames' illumination (`morph.zoo.lighting.normalise_illumination`):
    what wins back the accuracy the night shift's light costs.

    >>> mode = PipelineMode()
    >>> mode.set("skip-preprocess"); mode.skip_preprocess, mode.name
    (True, 'skip-preprocess')
    >>> mode.set("illumination-normalisation"); mode.skip_preprocess, mode.normalise, mode.name
    (False, True, 'illumination-normalisation')
    """

    skip_preprocess: bool = False
    normalise: bool = False

    MODES = ("full", "skip-preprocess", "illumination-normalisation")

    @property
    def name(self) -> str:
        return "skip-preprocess" if self.skip_preprocess else "illumination-normalisation" if self.normalise \
            else "full"

    def set(self, name: str) -> None:
        if name not in self.MODES:
            raise ValueError(f"unknown pipeline mode {name!r}: {', '.join(self.MODES)}")
        self.skip_preprocess = name == "skip-preprocess"
        self.normalise = name == "illumination-normalisation"


def _ingest(costs: InspectionCosts, ctx):
    ctx.sleep(costs.camera_read_ms)
    return {"frames": ctx.inputs["lot"].astype(np.float32) / 255.0}


def _fetch_flatfield(costs: InspectionCosts, ctx):
    ctx.sleep(costs.calibration_fetch_ms)
    return _VIGNETTE


def _reinspect(model: Classifier, confidence_floor: float, ctx):
    """Re-score the low-confidence images with test-time augmentation on a replica of the model serving now."""
    tensor, scores = ctx.inputs["tensor"], ctx.inputs["scores"]
    replica = ctx.resource()
    if replica.identity != model.identity:  # the node morphed since the replica was opened
        replica = model.replica()
    tta = _test_time_augmented(replica, tensor)
    low = scores.max(axis=1) < confidence_floor
    return {"scores": np.where(low[:, None], tta, scores).astype(np.float32)}


def _fetch_reference(costs: InspectionCosts, ctx):
    ctx.sleep(costs.reference_fetch_ms)
    return _class_references()


def _output(costs: InspectionCosts, ctx):
    ctx.sleep(costs.sink_write_ms)
    ctx.emit(ctx.inputs["report"])
    return {"receipt": hashlib.sha256(ctx.inputs["report"]).hexdigest().encode()}


def _alternatives(costs: InspectionCosts, confidence_floor: float, quality_gate,
                  light_model: Classifier | None) -> dict[str, tuple[Alternative, ...]]:
    """What recovery may switch each step to, where it makes sense.

    The flat-field and the reference images from the node's cache, a backup
    replica of the validation service (slower), and ``light_model`` (a lighter
    morph variant) for inference. ``output`` has none: it appends to the results
    store and is not idempotent, so it is never executed twice; its fallback
    branch (`_spool`) keeps the report on the node for later delivery.
    """

    def cached_flatfield(ctx):
        return {"tensor": np.clip(ctx.inputs["frames"] / _VIGNETTE, 0.0, 1.0).astype(np.float32)}

    def backup_gate(ctx):
        ctx.sleep(2 * costs.validation_ms)  # the backup replica is farther away
        return quality_gate(ctx)

    def light_inference(ctx):
        return {"scores": softmax(light_model(ctx.inputs["tensor"]))}

    def cached_postprocess(ctx):
        report = _report(ctx.inputs["scores"], ctx.inputs["tensor"], _class_references(), confidence_floor)
        ctx.sleep(costs.render_ms)
        return {"report": report}

    light = (Alternative("light-model", light_inference, ("accelerator-light",)),) if light_model is not None else ()
    return {"preprocess": (Alternative("cached-flatfield", cached_flatfield),), "inference": light,
            "quality_gate": (Alternative("backup-validation", backup_gate, ("dep:validation-backup", "network")),),
            "postprocess": (Alternative("cached-reference", cached_postprocess),)}


def _spool(ctx):
    """The results store is unreachable: keep the report on the node, deliver it later (a degraded completion)."""
    return {"receipt": b"spooled:" + hashlib.sha256(ctx.inputs["report"]).hexdigest().encode()}


def inspection_workflow(model: Classifier, *, costs: InspectionCosts = InspectionCosts(),
                        confidence_floor: float = 0.8, max_low_share: float = 1 / 16,
                        workflow_id: str = "inspection", light_model: Classifier | None = None,
                        pipeline: PipelineMode | None = None) -> WorkflowSpec:
    """The seed's inspection pipeline, with a data-dependent branch.

    ``ingest → preprocess → inference → quality_gate → [reinspect →] postprocess → output``

    The gate sends a lot to re-inspection (test-time augmentation on a replica
    session) when more than ``max_low_share`` of its images have a confidence
    below ``confidence_floor`` (with the zoo's transformer, about a quarter of
    `inspection_lots`).
    ``quality_gate`` (an outside service) and ``output`` (writes to the results
    store) are critical. What speculation can use: postprocess needs only the
    scores, which exist before the slow gate finishes, and its reference
    images can be fetched early; preprocess's flat-field can be fetched while
    ingest reads the camera; the replica the re-inspection needs can be
    opened ahead. A swap of the model serving changes inference's and
    reinspect's environment, so a shadow computed on the old model never commits.

    For recovery, each step says what it ``uses`` (the config, validation and
    product-database services, the results store ``dep:storage`` that other
    workflows share, the network, the accelerator, the camera's input) and has
    the alternatives `_alternatives` gives it.
    """

    mode = pipeline or PipelineMode()

    def preprocess(ctx):
        frames = ctx.inputs["frames"]
        if mode.skip_preprocess:  # no flat-field: nothing fetched, nothing divided
            return {"tensor": np.clip(frames, 0.0, 1.0).astype(np.float32)}
        tensor = np.clip(frames / ctx.data("flatfield"), 0.0, 1.0).astype(np.float32)
        return {"tensor": normalise_illumination(tensor) if mode.normalise else tensor}

    def inference(ctx):
        return {"scores": softmax(model(ctx.inputs["tensor"]))}

    def quality_gate(ctx):
        ctx.sleep(costs.validation_ms)
        low = ctx.inputs["scores"].max(axis=1) < confidence_floor
        return {"verdict": b"reinspect" if low.mean() > max_low_share else b"pass"}

    def postprocess(ctx):
        report = _report(ctx.inputs["scores"], ctx.inputs["tensor"], ctx.data("reference"), confidence_floor)
        ctx.sleep(costs.render_ms)
        return {"report": report}

    alternatives = _alternatives(costs, confidence_floor, quality_gate, light_model)

    return WorkflowSpec(workflow_id, (
        Step("ingest", partial(_ingest, costs), inputs=("lot",), outputs=("frames",), resources={"cpu": 0.1},
             uses=("input",)),
        Step("preprocess", preprocess, inputs=("frames",), outputs=("tensor",),
             fetch={"flatfield": partial(_fetch_flatfield, costs)}, environment=lambda: mode.name,
             resources={"cpu": 0.5}, uses=("dep:config", "network"), alternatives=alternatives["preprocess"]),
        Step("inference", inference, inputs=("tensor",), outputs=("scores",),
             environment=lambda: model.identity, resources={"cpu": 1.0}, uses=("accelerator",),
             alternatives=alternatives["inference"]),
        Step("quality_gate", quality_gate, inputs=("scores",), outputs=("verdict",), critical=True,
             resources={"cpu": 0.1}, uses=("dep:validation", "network"),
             alternatives=alternatives["quality_gate"]),
        Step("reinspect", partial(_reinspect, model, confidence_floor), inputs=("tensor", "scores"),
             outputs=("scores",), after=("quality_gate",),
             when=lambda artifacts: artifacts["verdict"].value == b"reinspect", resource=ReplicaResource(model),
             environment=lambda: model.identity, resources={"cpu": 1.0}, uses=("accelerator",)),
        Step("postprocess", postprocess, inputs=("scores", "tensor"), outputs=("report",),
             after=("quality_gate", "reinspect"), fetch={"reference": partial(_fetch_reference, costs)},
             resources={"cpu": 0.5}, uses=("dep:product-db", "network"), alternatives=alternatives["postprocess"]),
        Step("output", partial(_output, costs), inputs=("report",), outputs=("receipt",), critical=True,
             resources={"cpu": 0.1}, idempotent=False, uses=("dep:storage", "network"), fallback=_spool),
    ))
