"""Writing a trained model to ONNX in the three precisions the ladder serves.

* fp32: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``;
  the dynamo exporter needs onnxscript), opset 17, dynamic batch, input
  ``input`` [N, H, W] (`morph.zoo.data.input_shape`) and output ``logits`` [N, classes].
* fp16: weights and activations converted by onnxruntime's float16 converter
  with float32 inputs and outputs kept (callers need not know the precision).
  Some operators have no float16 kernel on ONNX Runtime's CPU provider, or
  trip its optimiser; those are found by opening the session in a child
  process and kept in float32 (the converter puts casts around them). The list
  of kept operators goes into the manifest.
* int8: dynamic quantisation (weights int8 ahead of time, activations
  quantised at run time), which needs no calibration data; or static
  quantisation (`to_int8_static`: activations' ranges calibrated on training
  frames ahead of time, QOperator format, so int8 kernels run back to back
  without re-quantising; the first convolution, the head and element-wise ops
  stay float). The build uses static quantisation where the dynamic
  model is slower than fp32 and says which it chose in the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from morph.zoo.data import input_shape
from morph.zoo.models import no_fastpath
from morph.zoo.runtime import probe

OPSET = 17
INPUT, OUTPUT = "input", "logits"


def to_onnx(model: torch.nn.Module, path: Path) -> Path:
    model.eval()
    example = torch.zeros(2, *input_shape())
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


@contextlib.contextmanager
def _quiet_quantiser():
    # The quantiser logs a warning on every call to run its pre-processing, whose
    # symbolic shape inference fails on these graphs (Reshape with a computed shape).
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def to_int8(src: Path, dst: Path) -> Path:
    """Dynamic quantisation: int8 weights, activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantiser():
        # The SNN's Gemm outputs lose their type in shape inference; they are float.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst


class _Frames:
    """Calibration batches for the static quantiser (its CalibrationDataReader protocol)."""

    def __init__(self, frames: np.ndarray, batch_size: int = 32):
        self._batches = iter([np.ascontiguousarray(frames[i:i + batch_size], dtype=np.float32)
                              for i in range(0, len(frames), batch_size)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


#: Op types static quantisation turns into int8 kernels: the weighted layers, and the
#: activations ONNX Runtime fuses into them.
QUANTISED_OPS = ("Conv", "MatMul", "Gemm", "Relu", "Clip")


def float_edge_layers(path: Path) -> list[str]:
    """Names of the layers static quantisation leaves in float: the first convolution
    (one input channel: int8 gains nothing there, and the frame's raw range is the
    hardest to calibrate) and the classifier head (a handful of outputs, which the
    logits' precision matters most for). Keeping the first and last layers in float is
    the usual practice of integer-only inference (Jacob et al., 2018)."""
    nodes = onnx.load(str(path)).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads[-1:]


def to_int8_static(src: Path, dst: Path, calibration: np.ndarray) -> Path:
    """Static quantisation: int8 weights and activations, the activations' ranges
    calibrated (min/max) on ``calibration`` frames [N, H, W]; QOperator format
    (QLinearConv, QLinearMatMul...), unsigned activations and signed weights.
    What is quantised: the layers with weights (`QUANTISED_OPS`) and the
    activations fused into them; the first convolution and the head stay float
    (`float_edge_layers`), and so do element-wise ops (residual sums, attention's
    and the snn's updates): at these sizes their int8 forms cost more in
    quantise/dequantise steps than they save (measured: the snn's int8 ran 0.037
    ms with its membrane updates in int8, 0.030 ms without, its fp32 0.030 ms),
    and an int8 membrane would move spikes.

    References: Jacob et al., "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", 2018.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet_quantiser():
        quantize_static(str(src), str(dst), _Frames(calibration), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=float_edge_layers(src),
                        op_types_to_quantize=list(QUANTISED_OPS),
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst
