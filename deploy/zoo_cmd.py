"""``liquid zoo build`` and ``liquid zoo show``: build the model zoo, print what it measured."""

from __future__ import annotations

import json
import sys

from deploy.cli import UsageError


def register(tree) -> None:
    build = tree.command(
        "zoo build", help="train, distil, export (fp32/fp16/int8) and measure the five variants",
        handler=run_build,
        description="Generate the inspection task (seeded frames of steel parts with scratches, dents, stains "
                    "and cracks), train the transformer teacher on it, distil lstm, cnn, mobilenet and snn "
                    "students from it (logits and features), export each to ONNX in fp32, fp16 and int8, "
                    "measure accuracy, latency and cost in ONNX Runtime, and write manifest.json. A complete, "
                    "intact zoo is reused. The full profile takes a few minutes on 2 cores.")
    build.add_argument("--out", metavar="DIR",
                       help="zoo directory (default: $LIQUID_ZOO_DIR or .cache/zoo; .cache/zoo-reduced for the "
                            "reduced profile)")
    build.add_argument("--force", action="store_true", help="rebuild even when a complete zoo is cached")
    build.add_argument("--profile", choices=("full", "reduced"), default="full",
                       help="full (default: the demo and benchmarks) or reduced (fewer training frames and "
                            "epochs, same models and test split: what the tests build)")

    show = tree.command("zoo show", help="print the zoo's measured table", handler=run_show)
    show.add_argument("--dir", metavar="DIR", help="zoo directory (default: $LIQUID_ZOO_DIR or .cache/zoo)")
    show.add_argument("--json", action="store_true", help="print manifest.json instead of the table")


def run_build(args) -> int:
    from morph.zoo import build_zoo

    manifest = build_zoo(args.out, force=args.force, progress=lambda line: print(line, flush=True),
                         profile=args.profile)
    print(format_seed_table(manifest))
    print()
    print(format_table(manifest))
    below = manifest.info.get("accuracy_floor", {}).get("below", [])
    return 1 if below else 0


def run_show(args) -> int:
    from morph.zoo import ZooMissingError, load_manifest

    try:
        manifest = load_manifest(args.dir)
    except ZooMissingError as err:
        raise UsageError(str(err)) from None
    if args.json:
        json.dump(manifest.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    print(format_seed_table(manifest))
    print()
    print(format_table(manifest))
    problems = manifest.problems()
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0


#: The seed paper's §3.1 table: parameters and latency per variant (its ResNet-18 is our residual cnn).
SEED_TABLE = {"transformer": ("110 M", 45.0), "lstm": ("25 M", 18.0), "cnn": ("11 M", 8.0),
              "mobilenet": ("4.2 M", 5.0), "snn": ("2 M", 3.0)}
SEED_COLUMNS = ("variant (fp32)", "params", "FLOPs", "accuracy", "acc/transformer", "b1 ms", "b32 ms",
                "CPU ms/inf", "b1/snn", "seed params", "seed ms", "seed ms/snn")


def format_seed_table(manifest, precision: str = "fp32") -> str:
    """The seed's §3.1 table, measured: one row per variant at ``precision``, with the seed's figures beside."""
    from morph.ladder import PRECISIONS, VARIANTS

    rungs = [manifest.entries[(v, precision)] for v in VARIANTS if (v, precision) in manifest]
    if not rungs:
        return f"(no {precision} models in the zoo)"
    top, snn = rungs[0], rungs[-1]
    rows = [SEED_COLUMNS]
    for e in rungs:
        seed_params, seed_ms = SEED_TABLE[e.variant]
        rows.append((e.variant, f"{e.params:,}", f"{e.flops:,}", f"{e.accuracy:.4f}",
                     f"{e.accuracy / top.accuracy:.3f}", f"{e.latency_ms_b1:.4f}", f"{e.latency_ms_b32:.3f}",
                     f"{e.cpu_ms:.4f}", f"{e.latency_ms_b1 / snn.latency_ms_b1:.1f}x", seed_params, f"{seed_ms:g}",
                     f"{seed_ms / SEED_TABLE['snn'][1]:.1f}x"))
    lines = _align(rows, text_cols={0})
    drift = manifest.info.get("lighting_drift", {}).get("models", {})
    if drift:
        lines.append("night shift, accuracy day -> night -> night with illumination normalisation: " + "; ".join(
            f"{k.split('/')[0]} {r['raw']['0.0']:.3f} -> {r['raw']['1.0']:.3f} -> {r['normalised']['1.0']:.3f}"
            for k, r in drift.items()))
    ladder = manifest.info.get("ladder", {})
    violations = ladder.get("violations", [])
    for p in [precision] + [p for p in PRECISIONS if p != precision]:
        own = [v.split(": ", 1)[1] for v in violations if v.startswith(f"{p}:")]
        per = ladder.get(p)
        lines.append(f"ladder ({p}): " + ("not checked" if per is None else "; ".join(own) if own else
                                         "cost falls strictly at every rung (params, FLOPs, b1, b32, CPU) and "
                                         f"accuracy does not rise beyond noise; b1 steps >= "
                                         f"{per['min_step_ratio']['latency_ms_b1']}x"))
    methods = [f"{e.variant} {e.notes.split(' quantisation')[0]}" for e in manifest if e.precision == "int8"]
    if methods:
        lines.append("int8 quantisation: " + ", ".join(methods))
    return "\n".join(lines)


def _align(rows, text_cols) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i in text_cols else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


COLUMNS = ("variant", "precision", "params", "accuracy", "b1 ms", "b32 ms", "FLOPs", "CPU ms/inf", "size KiB",
           "sha256")


def format_table(manifest) -> str:
    """The manifest as an aligned text table, ladder order, plus a line of build facts."""
    rows = [COLUMNS]
    for e in manifest:
        rows.append((e.variant, e.precision, f"{e.params:,}", f"{e.accuracy:.4f}", f"{e.latency_ms_b1:.3f}",
                     f"{e.latency_ms_b32:.3f}", f"{e.flops:,}", f"{e.cpu_ms:.4f}", f"{e.size_bytes / 1024:.1f}",
                     e.sha256[:12]))
    lines = _align(rows, text_cols={0, 1, len(COLUMNS) - 1})
    info = manifest.info
    versions = info.get("versions", {})
    lines.append(f"zoo {manifest.root}: built {info.get('built_at', '?')} in {info.get('build_seconds', 0):.0f} s; "
                 f"torch {versions.get('torch', '?')}, onnxruntime {versions.get('onnxruntime', '?')}; "
                 f"{info.get('profile', '?')} profile; latency = median wall time per call, CPU ms = median CPU "
                 f"time per batch-1 call (interleaved rounds, one intra-op thread); int8 method per model in "
                 f"`zoo show --json`")
    return "\n".join(lines)
