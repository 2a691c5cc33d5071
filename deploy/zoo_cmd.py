"""``liquid zoo build`` and ``liquid zoo show``: build the model zoo, print what it measured."""

from __future__ import annotations

import json
import sys

from deploy.cli import UsageError


def register(tree) -> None:
    build = tree.command(
        "zoo build", help="train, distil, export (fp32/fp16/int8) and measure the five variants",
        handler=run_build,
        description="Train the transformer teacher on sklearn's digits, distil lstm, cnn, mobilenet and snn "
                    "students from it, export each to ONNX in fp32, fp16 and int8, measure accuracy, latency "
                    "and cost in ONNX Runtime, and write manifest.json. A complete, intact zoo is reused.")
    build.add_argument("--out", metavar="DIR", help="zoo directory (default: $LIQUID_ZOO_DIR or .cache/zoo)")
    build.add_argument("--force", action="store_true", help="rebuild even when a complete zoo is cached")

    show = tree.command("zoo show", help="print the zoo's measured table", handler=run_show)
    show.add_argument("--dir", metavar="DIR", help="zoo directory (default: $LIQUID_ZOO_DIR or .cache/zoo)")
    show.add_argument("--json", action="store_true", help="print manifest.json instead of the table")


def run_build(args) -> int:
    from morph.zoo import build_zoo

    manifest = build_zoo(args.out, force=args.force, progress=lambda line: print(line, flush=True))
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
    print(format_table(manifest))
    problems = manifest.problems()
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0


COLUMNS = ("variant", "precision", "params", "accuracy", "b1 ms", "b32 ms", "FLOPs", "CPU ms/inf", "size KiB",
           "sha256")


def format_table(manifest) -> str:
    """The manifest as an aligned text table, ladder order, plus a line of build facts."""
    rows = [COLUMNS]
    for e in manifest:
        rows.append((e.variant, e.precision, f"{e.params:,}", f"{e.accuracy:.4f}", f"{e.latency_ms_b1:.3f}",
                     f"{e.latency_ms_b32:.3f}", f"{e.flops:,}", f"{e.cpu_ms:.4f}", f"{e.size_bytes / 1024:.1f}",
                     e.sha256[:12]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    text_cols = {0, 1, len(COLUMNS) - 1}
    lines = ["  ".join(cell.ljust(w) if i in text_cols else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    info = manifest.info
    versions = info.get("versions", {})
    lines.append(f"zoo {manifest.root}: built {info.get('built_at', '?')} in {info.get('build_seconds', 0):.0f} s; "
                 f"torch {versions.get('torch', '?')}, onnxruntime {versions.get('onnxruntime', '?')}; "
                 f"latency = median wall time per call, CPU ms = process CPU time per batch-1 inference")
    return "\n".join(lines)
