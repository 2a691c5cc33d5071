"""Writing a trained model to ONNX in the three precisions the ladder serves.

* fp32: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``;
  the dynamo exporter needs onnxscript), opset 17, dynamic batch, input
  ``input`` [N, 8, 8] and output ``logits`` [N, 10].
* fp16: weights and activations converted by onnxruntime's float16 converter
  with float32 inputs and outputs kept (callers need not know the precision).
  Some operators have no float16 kernel on ONNX Runtime's CPU provider, or
  trip its optimiser; those are found by opening the session in a child
  process and kept in float32 (the converter puts casts around them). The list
  of kept operators goes into the manifest.
* int8: dynamic quantisation (weights int8 ahead of time, activations
  quantised at run time), which needs no calibration data.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import onnx
import torch

from morph.zoo.models import no_fastpath
from morph.zoo.runtime import probe

OPSET = 17
INPUT, OUTPUT = "input", "logits"


def to_onnx(model: torch.nn.Module, path: Path) -> Path:
    model.eval()
    example = torch.zeros(2, 8, 8)
    with torch.no_grad(), no_fastpath(), warnings.catch_warnings():
        # Known, checked noise: the tracer flags the shape checks inside
        # MultiheadAttention and LSTM, and warns an LSTM traced at batch 2 may not
        # run at other sizes (the build probes batch 1 and 32 and scores the
        # whole split); the TorchScript exporter calls itself deprecated.
        for category in (UserWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    onnx.checker.check_model(str(path))
    return path


_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(")


def _convert(src: Path, dst: Path, kept: list[str]) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     op_block_list=DEFAULT_OP_BLOCK_LIST + kept)
    onnx.save(model, str(dst))


def to_fp16(src: Path, dst: Path) -> tuple[Path, list[str]]:
    """Convert ``src`` to float16; returns the path and the op types kept in float32.

    Each candidate is opened and run in a child process (`runtime.probe`). An
    error naming an operator without a float16 kernel keeps that operator in
    float32; a crash (ONNX Runtime 1.31's full optimisation level segfaults on
    the transformer's float16 Transpose nodes) is searched for the one op type
    whose float32 fallback makes the graph load."""
    kept: list[str] = []
    while True:
        _convert(src, dst, kept)
        code, err = probe(dst)
        if code == 0:
            return dst, kept
        missing = _MISSING_KERNEL.search(err)
        if missing and missing.group(1) not in kept:
            kept.append(missing.group(1))
            continue
        if code < 0:  # killed by a signal: find an op type to keep in float32
            for op in _op_types(dst):
                _convert(src, dst, kept + [op])
                if probe(dst)[0] == 0:
                    return dst, kept + [op]
        raise RuntimeError(f"no float16 conversion of {src.name} runs in ONNX Runtime "
                           f"(kept in float32: {kept or 'none'}): {err.strip()[-300:]}")


def _op_types(path: Path) -> list[str]:
    """Op types of the float16 graph, compute-bearing ones first, glue ops skipped."""
    from collections import Counter

    glue = {"Cast", "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat"}
    counts = Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.op_type not in glue)
    return [op for op, _ in counts.most_common()]


def to_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs a warning on every call to run its pre-processing, whose
    # symbolic shape inference fails on these graphs (Reshape with a computed shape).
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        # The SNN's Gemm outputs lose their type in shape inference; they are float.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(previous)
    return dst
