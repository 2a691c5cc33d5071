"""Building the zoo: train, distil, export three precisions, measure, write the manifest.

`build_zoo` is what ``liquid zoo build`` and the tests call. A complete zoo
whose files still match their checksums is returned as is; a lock file makes
concurrent builders (two test sessions, say) wait for one another instead of
writing the same files at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from morph.ladder import PRECISIONS, VARIANTS
from morph.zoo import data, runtime
from morph.zoo.manifest import FORMAT, ZooEntry, ZooManifest, default_zoo_dir, load_manifest, sha256_file, \
    ZooMissingError

TEACHER = "transformer"
#: Every fp32 and fp16 student must keep this fraction of the teacher's accuracy.
ACCURACY_FLOOR = 0.95
SEEDS = {v: i for i, v in enumerate(VARIANTS)}
#: Timed runs per measurement: enough for a stable median in about a second per model.
RUNS_B1, RUNS_B32, RUNS_CPU = 200, 50, 300


@contextlib.contextmanager
def _build_lock(root: Path):
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_zoo(out_dir: str | Path | None = None, force: bool = False,
              progress: Callable[[str], None] | None = print) -> ZooManifest:
    """Build the zoo into ``out_dir`` (default: `default_zoo_dir`), or return the
    cached one when it is complete and its files match their checksums."""
    say = progress or (lambda _line: None)
    root = Path(out_dir) if out_dir is not None else default_zoo_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):
        if not force:
            try:
                cached = load_manifest(root)
                problems = cached.problems()
            except ZooMissingError:
                problems = ["no manifest yet"]
            if not problems:
                say(f"zoo: cached at {root} ({len(cached.entries)} models, built in "
                    f"{cached.info.get('build_seconds', 0):.0f} s); pass --force to rebuild")
                return cached
            say(f"zoo: building in {root} ({problems[0]})")
        else:
            say(f"zoo: building in {root} (forced)")
        return _build(root, say)


def _build(root: Path, say: Callable[[str], None]) -> ZooManifest:
    import onnx
    import onnxruntime
    import torch

    from morph.zoo.export import to_fp16, to_int8, to_onnx
    from morph.zoo.models import count_flops, count_params, make_model
    from morph.zoo.train import RECIPES, fit, soft_targets

    start = time.perf_counter()
    threads = torch.get_num_threads()
    # Tiny models train no faster on more threads, and the node's other work keeps its cores.
    torch.set_num_threads(1)
    try:
        train, val, test = (data.load_split(s) for s in data.SPLITS)
        models, trained = {}, {}
        soft = None
        for i, variant in enumerate(VARIANTS, 1):
            torch.manual_seed(SEEDS[variant])
            role = "teacher, hard labels" if variant == TEACHER else f"distilled, T={RECIPES[variant].temperature}"
            result = fit(make_model(variant), train, val, RECIPES[variant], teacher_logits=soft,
                         seed=SEEDS[variant])
            models[variant], trained[variant] = result.model, result
            if variant == TEACHER:
                soft = soft_targets(result.model, train)
            say(f"zoo: [{i}/{len(VARIANTS)}] trained {variant:<11} ({role}): {count_params(result.model):,} params, "
                f"val acc {result.val_accuracy:.3f}, {result.epochs} epochs in {result.seconds:.1f} s")

        entries = {}
        for variant in VARIANTS:
            model = models[variant]
            fp32 = _atomic(root / f"{variant}-fp32.onnx", lambda tmp: to_onnx(model, tmp))
            kept: list[str] = []

            def fp16_write(tmp, src=fp32):
                kept.extend(to_fp16(src, tmp)[1])

            paths = {"fp32": fp32,
                     "fp16": _atomic(root / f"{variant}-fp16.onnx", fp16_write),
                     "int8": _atomic(root / f"{variant}-int8.onnx", lambda tmp, src=fp32: to_int8(src, tmp))}
            params, flops = count_params(model), count_flops(model)
            for precision in PRECISIONS:
                entry = _measure(root, variant, precision, paths[precision], params, flops, test,
                                 tuple(kept) if precision == "fp16" else ())
                entries[entry.key] = entry
                say(f"zoo: exported {variant:<11} {precision}: acc {entry.accuracy:.3f}, "
                    f"b1 {entry.latency_ms_b1:.3f} ms, b32 {entry.latency_ms_b32:.3f} ms, "
                    f"{entry.size_bytes / 1024:.0f} KiB"
                    + (f", ops kept in fp32: {', '.join(entry.fp32_ops)}" if entry.fp32_ops else ""))

        floor = ACCURACY_FLOOR * entries[(TEACHER, "fp32")].accuracy
        below = [f"{v}/{p}" for (v, p), e in entries.items() if p != "int8" and e.accuracy < floor]
        say(f"zoo: accuracy floor {ACCURACY_FLOOR} x teacher = {floor:.3f}: "
            + ("all fp32/fp16 models pass" if not below else f"BELOW FLOOR: {', '.join(below)}"))
        manifest = ZooManifest(root, entries, {
            "format": FORMAT,
            "task": "sklearn digits (8x8, 10 classes); input [N, 8, 8] float32 in [0, 1], output logits [N, 10]",
            "split": {"seed": data.SPLIT_SEED, **{s: len(data.load_split(s)) for s in data.SPLITS}},
            "teacher": TEACHER,
            "distillation": {"temperature": RECIPES["lstm"].temperature, "alpha": RECIPES["lstm"].alpha},
            "accuracy_floor": {"ratio": ACCURACY_FLOOR, "floor": floor, "below": below},
            "measured_with": {"intra_op_threads": 1, "runs_b1": RUNS_B1, "runs_b32": RUNS_B32,
                              "cpu_runs": RUNS_CPU},
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - start, 1),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "onnx": onnx.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "machine": {"platform": platform.platform(), "processor": platform.machine(),
                        "cpu_count": os.cpu_count()},
        })
        manifest.save()
        say(f"zoo: wrote {root / 'manifest.json'}: {len(entries)} models in {manifest.info['build_seconds']:.0f} s")
        return manifest
    finally:
        torch.set_num_threads(threads)


def _atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a temporary file and rename, so a reader never opens half a model."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.onnx")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _measure(root: Path, variant: str, precision: str, path: Path, params: int, flops: int,
             test: data.DigitsSplit, fp32_ops: tuple[str, ...]) -> ZooEntry:
    if precision != "fp16":  # to_fp16 has probed its output already
        # A graph that crashes ONNX Runtime must fail the build, not the worker that loads it.
        code, err = runtime.probe(path)
        if code != 0:
            raise RuntimeError(f"{path.name} does not run in ONNX Runtime (exit {code}): {err.strip()[-300:]}")
    session = runtime.open_session(path)
    x1, x32 = test.x[:1], test.x[:32]
    return ZooEntry(
        variant=variant, precision=precision, path=path.relative_to(root).as_posix(),
        sha256=sha256_file(path), params=params, size_bytes=path.stat().st_size,
        accuracy=runtime.accuracy(session, test.x, test.y),
        latency_ms_b1=round(runtime.median_latency_ms(session, x1, RUNS_B1), 4),
        latency_ms_b32=round(runtime.median_latency_ms(session, x32, RUNS_B32), 4),
        flops=flops, cpu_ms=round(runtime.cpu_ms_per_inference(session, x1, RUNS_CPU), 4),
        fp32_ops=fp32_ops,
        notes="fp16 weights and activations, float32 I/O" if precision == "fp16" else
              "dynamic quantisation: int8 weights, activations quantised at run time" if precision == "int8" else "",
    )
