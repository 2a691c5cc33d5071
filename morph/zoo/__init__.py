"""The model zoo: five variants of one defect classifier, each in fp32, fp16 and int8 ONNX.

The transformer is the teacher; the lstm, residual cnn, mobilenet-style and
spiking (snn) students are distilled from it. ``build_zoo`` trains, exports
and measures them and writes ``manifest.json``; ``load_manifest`` reads it
back for the edge worker and the CLI. Importing this package needs no torch:
only building does.

Modules: `inspection` and `lighting` (the generated inspection task), `data`
(its seeded splits and the input shape callers feed), `models` (torch definitions
and FLOP counting), `train` (teacher and distillation), `export` (ONNX in three
precisions), `runtime` (ONNX Runtime sessions and measurements), `manifest`,
`build`.

>>> from morph.zoo import load_split
>>> load_split("test").x.shape
(2000, 32, 32)
"""

from __future__ import annotations

from morph.zoo.data import CLASSES, InspectionSplit, InspectionTask, input_shape, load_split
from morph.zoo.manifest import ModelNotInZoo, ZooEntry, ZooManifest, ZooMissingError, default_zoo_dir, load_manifest


def build_zoo(out_dir=None, force: bool = False, progress=print, profile: str = "full") -> ZooManifest:
    """Build (or return the cached) zoo; see `morph.zoo.build.build_zoo`."""
    from morph.zoo.build import build_zoo as build

    return build(out_dir, force=force, progress=progress, profile=profile)


__all__ = ["CLASSES", "InspectionSplit", "InspectionTask", "ModelNotInZoo", "ZooEntry", "ZooManifest", "ZooMissingError", "build_zoo",
           "default_zoo_dir", "input_shape", "load_manifest", "load_split"]
