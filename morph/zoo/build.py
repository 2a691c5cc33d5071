"""Building the zoo: generate the task, train, distil, export three precisions, measure, write the manifest.

`build_zoo` is what ``liquid zoo build`` and the tests call. A complete zoo
whose files still match their checksums is returned as is; a lock file makes
concurrent builders (two test sessions, say) wait for one another instead of
writing the same files at once. A `ZooProfile` says how much to train: the
full zoo (the demo, the benchmarks) or a reduced one, built by the same code
on fewer training frames and epochs, for the tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from morph.ladder import VARIANTS
from morph.zoo import data, runtime
from morph.zoo.ladder_check import check_ladder
from morph.zoo.manifest import (
    FORMAT,
    ZooEntry,
    ZooManifest,
    ZooMissingError,
    default_zoo_dir,
    load_manifest,
    sha256_file,
)

TEACHER = "transformer"
#: Every fp32 and fp16 student must keep this fraction of the teacher's accuracy.
ACCURACY_FLOOR = 0.90
SEEDS = {v: i for i, v in enumerate(VARIANTS)}
#: Interleaved timing rounds (see `runtime.measure_interleaved`): 600 batch-1 and 120 batch-32 calls per model,
#: enough for the medians' order to hold on a loaded 2-core machine where rungs are 1.3x apart.
ROUNDS, CALLS_B1, CALLS_B32 = 60, 10, 2
#: The teacher's torch state_dict, beside the ONNX files.
TEACHER_WEIGHTS = "teacher.pt"
#: Frames of the training split the static int8 quantiser calibrates on.
CALIBRATION_FRAMES = 256


@dataclass(frozen=True)
class ZooProfile:
    """How much to train: the task's split sizes and a factor on every recipe's epochs."""

    name: str
    task: data.InspectionTask
    epoch_factor: float = 1.0


FULL = ZooProfile("full", data.TASK)
#: Same test split, models and epochs as the full zoo on 1500 training frames (about 150 s of CPU); at half
#: the epochs the exposure-augmented lstm stayed near chance.
REDUCED = ZooProfile("reduced", data.InspectionTask(train=1500, val=500), epoch_factor=1.0)
PROFILES = {p.name: p for p in (FULL, REDUCED)}


@contextlib.contextmanager
def _build_lock(root: Path):
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_zoo(out_dir: str | Path | None = None, force: bool = False,
              progress: Callable[[str], None] | None = print, profile: ZooProfile | str = FULL) -> ZooManifest:
    """Build the zoo into ``out_dir`` (default: `default_zoo_dir` of the profile), or
    return the cached one when it is complete, of this profile, and its files
    match their checksums."""
    say = progress or (lambda _line: None)
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    root = Path(out_dir) if out_dir is not None else default_zoo_dir(profile.name)
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):
        if not force:
            try:
                cached = load_manifest(root)
                problems = cached.problems()
                if not problems and cached.info.get("profile") != profile.name:
                    problems = [f"built as the {cached.info.get('profile')} profile, {profile.name} wanted"]
            except ZooMissingError:
                problems = ["no manifest yet"]
            if not problems:
                say(f"zoo: cached at {root} ({len(cached.entries)} models, built in "
                    f"{cached.info.get('build_seconds', 0):.0f} s); pass --force to rebuild")
                return cached
            say(f"zoo: building the {profile.name} zoo in {root} ({problems[0]})")
        else:
            say(f"zoo: building the {profile.name} zoo in {root} (forced)")
        return _build(root, profile, say)


def _train_all(profile: ZooProfile, train, val, say):
    """The teacher here, then the four students two at a time in child processes (one
    thread each: training is seeded and single-threaded, so the models are the same
    whichever process trains them)."""
    import torch

    from morph.zoo.models import count_params, make_model
    from morph.zoo.train import RECIPES, fit, teacher_targets

    torch.manual_seed(SEEDS[TEACHER])
    recipe = RECIPES[TEACHER].scaled(profile.epoch_factor)
    result = fit(make_model(TEACHER), train, val, recipe, seed=SEEDS[TEACHER])
    models = {TEACHER: result.model}
    say(f"zoo: [1/{len(VARIANTS)}] trained {TEACHER:<11} (teacher, hard labels): {count_params(result.model):,} "
        f"params, val acc {result.val_accuracy:.3f}, {result.epochs} epochs in {result.seconds:.1f} s")
    targets = teacher_targets(result.model, train)
    students = [v for v in VARIANTS if v != TEACHER]
    jobs = [(v, RECIPES[v].scaled(profile.epoch_factor), SEEDS[v], train, val, targets) for v in students]
    workers = min(2, os.cpu_count() or 1)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child of a process that has run OpenMP regions can hang.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = pool.map(_train_student, jobs)
            for i, (variant, state, val_acc, epochs, seconds) in enumerate(outcomes, 2):
                models[variant] = _student_from(variant, state)
                _say_student(say, i, variant, models[variant], val_acc, epochs, seconds, jobs[i - 2][1])
    else:
        for i, job in enumerate(jobs, 2):
            variant, state, val_acc, epochs, seconds = _train_student(job)
            models[variant] = _student_from(variant, state)
            _say_student(say, i, variant, models[variant], val_acc, epochs, seconds, job[1])
    return {v: models[v] for v in VARIANTS}


def _train_student(job):
    """Distil one student (runs in a child process); returns its weights and figures."""
    import torch

    from morph.zoo.models import make_model
    from morph.zoo.train import fit

    variant, recipe, seed, train, val, targets = job
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    result = fit(make_model(variant), train, val, recipe, teacher=targets, seed=seed)
    return variant, result.model.state_dict(), result.val_accuracy, result.epochs, result.seconds


def _student_from(variant: str, state):
    from morph.zoo.models import make_model

    model = make_model(variant)
    model.load_state_dict(state)
    return model.eval()


def _say_student(say, i, variant, model, val_acc, epochs, seconds, recipe):
    from morph.zoo.models import count_params

    say(f"zoo: [{i}/{len(VARIANTS)}] trained {variant:<11} (distilled: logits at T={recipe.temperature} + features): "
        f"{count_params(model):,} params, val acc {val_acc:.3f}, {epochs} epochs in {seconds:.1f} s")


def _export_all(root: Path, models: dict, train, say) -> tuple[dict, dict]:
    """Every variant in every precision; returns paths and per-file notes (fp16 ops kept, int8 method)."""
    from morph.zoo.export import to_fp16, to_int8, to_int8_static, to_onnx

    paths, notes = {}, {}
    calibration = train.x[:CALIBRATION_FRAMES]
    for variant, model in models.items():
        fp32 = _atomic(root / f"{variant}-fp32.onnx", lambda tmp, m=model: to_onnx(m, tmp))
        kept: list[str] = []

        def fp16_write(tmp, src=fp32):
            kept.extend(to_fp16(src, tmp)[1])

        paths[(variant, "fp32")] = fp32
        paths[(variant, "fp16")] = _atomic(root / f"{variant}-fp16.onnx", fp16_write)
        notes[(variant, "fp16")] = ("fp16 weights and activations, float32 I/O", tuple(kept))
        int8 = _atomic(root / f"{variant}-int8.onnx", lambda tmp, src=fp32: to_int8(src, tmp))
        _probe(int8)
        method = "dynamic quantisation: int8 weights, activations quantised at run time"
        dynamic_ms, fp32_ms = _quick_b1(int8, fp32, train.x[:1])
        if dynamic_ms > fp32_ms:
            static = root / f".{variant}-int8-static.onnx"
            try:
                _atomic(static, lambda tmp, src=fp32: to_int8_static(src, tmp, calibration))
                _probe(static)
                static_ms, _ = _quick_b1(static, fp32, train.x[:1])
                if static_ms < dynamic_ms:
                    os.replace(static, int8)
                    method = (f"static quantisation, calibrated on {len(calibration)} training frames, first "
                              f"convolution and head in float (dynamic was slower than fp32: {dynamic_ms:.3f} vs {fp32_ms:.3f} ms)")
                else:
                    method += (f" (kept: static was no faster, {static_ms:.3f} ms; both slower than fp32, "
                               f"{fp32_ms:.3f} ms)")
            except Exception as err:  # noqa: BLE001  (a graph the static quantiser cannot handle keeps dynamic)
                method += f" (static quantisation failed: {str(err).strip()[:120]})"
            finally:
                static.unlink(missing_ok=True)
        paths[(variant, "int8")] = int8
        notes[(variant, "int8")] = (method, ())
        notes[(variant, "fp32")] = ("", ())
        say(f"zoo: exported {variant:<11} fp32, fp16" + (f" (kept in fp32: {', '.join(kept)})" if kept else "")
            + f", int8 ({method.split(':')[0].split(' (')[0]})")
    return paths, notes


def _probe(path: Path) -> None:
    # A graph that crashes ONNX Runtime must fail the build, not the worker that loads it.
    code, err = runtime.probe(path)
    if code != 0:
        raise RuntimeError(f"{path.name} does not run in ONNX Runtime (exit {code}): {err.strip()[-300:]}")


def _quick_b1(candidate: Path, reference: Path, x1: np.ndarray) -> tuple[float, float]:
    """Batch-1 median of ``candidate`` and ``reference``, interleaved (for choosing an int8 method)."""
    sessions = {"c": runtime.open_session(candidate), "r": runtime.open_session(reference)}
    timing = runtime.measure_interleaved(sessions, x1, x1, rounds=10, calls_b1=20, calls_b32=0)
    return timing["c"].latency_ms_b1, timing["r"].latency_ms_b1


def _build(root: Path, profile: ZooProfile, say: Callable[[str], None]) -> ZooManifest:
    import torch

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    threads = torch.get_num_threads()
    # Small models train faster on one thread than on two contended ones (measured
    # on a loaded 2-core machine: the transformer 1.9 vs 15 ms of CPU per frame).
    torch.set_num_threads(1)
    try:
        task = profile.task
        train, val, test = (data.load_split(s, task) for s in data.SPLITS)
        say(f"zoo: generated the inspection task (seed {task.seed}, {task.size}x{task.size}): "
            f"{len(train)} train / {len(val)} val / {len(test)} test frames")
        models = _train_all(profile, train, val, say)
        # The teacher's torch weights stay with the zoo, so students can be distilled again later.
        teacher_pt = _atomic(root / TEACHER_WEIGHTS, lambda tmp: torch.save(models[TEACHER].state_dict(), tmp))
        paths, notes = _export_all(root, models, train, say)
        say(f"zoo: measuring {len(paths)} models, interleaved ({ROUNDS} rounds)")
        sessions = {key: runtime.open_session(path) for key, path in paths.items()}
        manifest = ZooManifest(root, _measure_all(root, models, paths, notes, sessions, test), {})
        from morph.zoo.robustness import lighting_robustness

        drift = lighting_robustness({k: sessions[k] for k in paths if k[1] == "fp32"})
        say("zoo: night shift (fp32, accuracy day raw -> night raw -> night normalised): " + "; ".join(
            f"{k.split('/')[0]} {r['raw']['0.0']:.3f} -> {r['raw']['1.0']:.3f} -> {r['normalised']['1.0']:.3f}"
            for k, r in drift.items()))
        floor, below, ladder = _checks(manifest, len(test), say)
        manifest.info.update({
            **_task_facts(profile),
            "teacher_weights": {"path": TEACHER_WEIGHTS, "sha256": sha256_file(teacher_pt)},
            "accuracy_floor": {"ratio": ACCURACY_FLOOR, "floor": floor, "below": below},
            "ladder": ladder,
            "lighting_drift": {"levels": "0 = day shift, 1 = night shift (morph.zoo.lighting)",
                               "frames_per_level": 500, "models": drift},
            **_machine_facts(start, cpu_start),
        })
        manifest.save()
        say(f"zoo: wrote {root / 'manifest.json'}: {len(manifest.entries)} models in "
            f"{manifest.info['build_seconds']:.0f} s ({manifest.info['build_cpu_seconds']:.0f} s of CPU, "
            f"probes included)")
        return manifest
    finally:
        torch.set_num_threads(threads)


def _checks(manifest: ZooManifest, test_size: int, say: Callable[[str], None]) -> tuple[float, list, dict]:
    """The accuracy floor (fp32 and fp16 against the teacher) and the ladder's order, said as they are found."""
    floor = ACCURACY_FLOOR * manifest.entry(TEACHER, "fp32").accuracy
    below = [f"{v}/{p}" for (v, p), e in manifest.entries.items() if p != "int8" and e.accuracy < floor]
    ladder = check_ladder(manifest, test_size)
    say(f"zoo: accuracy floor {ACCURACY_FLOOR} x teacher = {floor:.3f}: "
        + ("all fp32/fp16 models pass" if not below else f"BELOW FLOOR: {', '.join(below)}"))
    for line in ladder["violations"] or ["cost and accuracy follow the ladder"]:
        say(f"zoo: ladder: {line}")
    return floor, below, ladder


def _measure_all(root: Path, models: dict, paths: dict, notes: dict, sessions: dict, test) -> dict:
    """Every exported model's entry: checksum, cost (interleaved timing), accuracy, agreement with torch."""
    from morph.zoo.models import count_flops, count_params

    timing = runtime.measure_interleaved(sessions, test.x[:1], test.x[:32], ROUNDS, CALLS_B1, CALLS_B32)
    reference = {v: _torch_logits(m, test.x) for v, m in models.items()}
    entries = {}
    for (variant, precision), path in paths.items():
        note, kept = notes[(variant, precision)]
        t = timing[(variant, precision)]
        onnx_logits = runtime.logits(sessions[(variant, precision)], test.x)
        entries[(variant, precision)] = ZooEntry(
            variant=variant, precision=precision, path=path.relative_to(root).as_posix(),
            sha256=sha256_file(path), params=count_params(models[variant]), size_bytes=path.stat().st_size,
            accuracy=float((onnx_logits.argmax(axis=1) == test.y).mean()),
            latency_ms_b1=round(t.latency_ms_b1, 4), latency_ms_b32=round(t.latency_ms_b32, 4),
            flops=count_flops(models[variant]), cpu_ms=round(t.cpu_ms, 4), fp32_ops=kept, notes=note,
            torch_max_abs_diff=round(float(np.abs(onnx_logits - reference[variant]).max()), 6),
            torch_agreement=float((onnx_logits.argmax(axis=1) == reference[variant].argmax(axis=1)).mean()))
    return entries


def _task_facts(profile: ZooProfile) -> dict:
    from morph.zoo.train import RECIPES

    task = profile.task
    return {
        "format": FORMAT,
        "profile": profile.name,
        "task": {**task.to_dict(), "input": {"name": runtime.INPUT, "shape": ["N", *data.input_shape(task)],
                                             "dtype": "float32", "range": [0.0, 1.0]},
                 "output": {"name": "logits", "shape": ["N", data.N_CLASSES]},
                 "lighting": "trained and scored on the day shift (morph.zoo.lighting.DAY_SHIFT)"},
        "split": {"seed": task.seed, **{s: task.count(s) for s in data.SPLITS}},
        "teacher": TEACHER,
        "distillation": {"temperature": RECIPES["lstm"].temperature, "alpha": RECIPES["lstm"].alpha,
                         "feature_weight": RECIPES["lstm"].beta,
                         "epochs": {v: RECIPES[v].scaled(profile.epoch_factor).epochs for v in VARIANTS}},
        "measured_with": {"intra_op_threads": 1, "rounds": ROUNDS, "calls_b1_per_round": CALLS_B1,
                          "calls_b32_per_round": CALLS_B32, "statistic": "median",
                          "cpu": "thread CPU time of the calling thread per batch-1 call"},
    }


def _machine_facts(start: float, cpu_start: float) -> dict:
    import onnx
    import onnxruntime
    import torch

    return {
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - start, 1),
        "build_cpu_seconds": round(_cpu_seconds() - cpu_start, 1),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnx": onnx.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
    }


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    from morph.zoo.models import no_fastpath

    model.eval()
    with torch.no_grad(), no_fastpath():
        return torch.cat([model(torch.from_numpy(np.array(x[i:i + 500]))) for i in range(0, len(x), 500)]).numpy()


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the ONNX Runtime probes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a temporary file and rename, so a reader never opens half a model."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
