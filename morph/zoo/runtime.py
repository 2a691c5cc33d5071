"""Opening zoo models in ONNX Runtime, the one way the build, the tests and the edge worker do.

Sessions run on the CPU provider with one intra-op thread: edge workers are
small, share their cores with the rest of the node, and one thread gives
steady, comparable latencies. Every caller opens sessions through
`open_session`, so what the manifest measured is what the worker serves.

>>> import numpy as np, onnx
>>> from onnx import helper, TensorProto
>>> graph = helper.make_graph(
...     [helper.make_node("ReduceSum", ["input", "axes"], ["logits"], keepdims=0)], "toy",
...     [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8])],
...     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8])],
...     [helper.make_tensor("axes", TensorProto.INT64, [1], [2])])
>>> toy = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
>>> session = open_session(toy.SerializeToString())
>>> x = np.zeros((2, 8, 8), np.float32); x[0, 3] = 1.0; x[1, 5] = 1.0
>>> predict(session, x).tolist()
[3, 5]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dataclasses import dataclass

import numpy as np

INPUT = "input"
PROVIDERS = ["CPUExecutionProvider"]


def session_options(threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: ORT warns about every fp16 cast it leaves
    return opts


def open_session(model: str | Path | bytes, threads: int = 1):
    """An ONNX Runtime session for a model file or its bytes."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads), providers=PROVIDERS)


def logits(session, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.concatenate([session.run(None, {INPUT: x[i:i + batch_size]})[0]
                           for i in range(0, len(x), batch_size)])


def predict(session, x: np.ndarray) -> np.ndarray:
    """Predicted class per frame of ``x`` [N, H, W]."""
    return logits(session, x).argmax(axis=1)


def accuracy(session, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(session, x) == y).mean())


def median_latency_ms(session, x: np.ndarray, runs: int, warmup: int = 3) -> float:
    """Median wall time of one ``run`` on batch ``x``."""
    feed = {INPUT: np.ascontiguousarray(x, dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def cpu_ms_per_inference(session, x: np.ndarray, runs: int) -> float:
    """Process CPU time (all threads) spent per ``run`` on batch ``x``: the
    energy proxy that counts what the work really cost, not just how long it took."""
    feed = {INPUT: np.ascontiguousarray(x, dtype=np.float32)}
    session.run(None, feed)
    start = time.process_time()
    for _ in range(runs):
        session.run(None, feed)
    return (time.process_time() - start) / runs * 1e3


@dataclass(frozen=True)
class Timing:
    """Medians over interleaved rounds, in ms per call: wall at batch 1 and 32, CPU at batch 1."""

    latency_ms_b1: float
    latency_ms_b32: float
    cpu_ms: float


def measure_interleaved(sessions: dict, x1: np.ndarray, x32: np.ndarray, rounds: int = 40,
                        calls_b1: int = 10, calls_b32: int = 2) -> dict:
    """Time every session in ``sessions`` round-robin: each round runs ``calls_b1``
    batch-1 and ``calls_b32`` batch-32 calls of each model in turn, and the medians
    are taken over all rounds. Interleaving spreads a busy spell of a shared machine
    over every model alike instead of landing on whichever was being timed, so the
    comparison between models survives load that the absolute figures do not."""
    feed1 = {INPUT: np.ascontiguousarray(x1, dtype=np.float32)}
    feed32 = {INPUT: np.ascontiguousarray(x32, dtype=np.float32)}
    wall1 = {k: [] for k in sessions}
    cpu1 = {k: [] for k in sessions}
    wall32 = {k: [] for k in sessions}
    for session in sessions.values():  # warm-up: first runs allocate
        for feed in (feed1, feed32, feed1):
            session.run(None, feed)
    for _ in range(rounds):
        for key, session in sessions.items():
            for _ in range(calls_b1):
                c, w = time.thread_time(), time.perf_counter()
                session.run(None, feed1)
                wall1[key].append(time.perf_counter() - w)
                cpu1[key].append(time.thread_time() - c)
            for _ in range(calls_b32):
                w = time.perf_counter()
                session.run(None, feed32)
                wall32[key].append(time.perf_counter() - w)
    def median_ms(values):
        return float(np.median(values) * 1e3) if values else float("nan")

    return {k: Timing(median_ms(wall1[k]), median_ms(wall32[k]), median_ms(cpu1[k])) for k in sessions}


_PROBE = """
import sys, numpy as np
from morph.zoo.data import N_CLASSES, input_shape
from morph.zoo.runtime import open_session, INPUT
session = open_session(sys.argv[1])
for n in (1, 32):
    out = session.run(None, {INPUT: np.zeros((n, *input_shape()), np.float32)})[0]
    assert out.shape == (n, N_CLASSES), out.shape
"""


def probe(path: Path) -> tuple[int, str]:
    """Open and run ``path`` in a child process; returns (exit code, stderr).

    A child, because an ONNX Runtime optimiser can crash the whole process on a
    graph it mishandles (it does on some float16 graphs), and the build must
    survive that to try another conversion."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, env=env)
    return done.returncode, done.stderr
