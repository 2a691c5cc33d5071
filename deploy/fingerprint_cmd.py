"""``liquid fingerprint show``: build a workflow's fingerprint from a log, a WfCommons instance or the signal store, and explain it.

Only wiring: the fingerprint is `fingerprint.temporal.Fingerprint`, the readers
are in `fingerprint.traces`, the history is `fingerprint.store.SignalStore`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deploy.errors import UsageError
from deploy.evaluate_nextstep import add_log_arguments, log_signals

DESCRIPTION = """\
Build the temporal fingerprint of WORKFLOW and print it: the reconstructed task
DAG (durations, edge kinds sequence/parallel/choice with probabilities,
hand-over delays, transfer sizes, and each edge's evidence: "lineage" when an
artifact the source wrote was read by the target, "handover" or "join" when
inferred from timing, with a confidence), frequent sequences, variants and
counted bad signals. Signals come from exactly one of:

  --log FILE.csv ...   an event log (WORKFLOW names it; with --workflow-col only
                       the rows whose value there is WORKFLOW)
  --store PATH|DSN     the signal history (SQLite file or PostgreSQL DSN)
  --wfcommons FILE     a WfCommons instance, replayed --runs times as an engine
                       would run it (seeded --jitter and --dispatch-ms), its
                       files as lineage unless --no-lineage
"""


def register(tree) -> None:
    p = tree.command("fingerprint show", help="explain a workflow's fingerprint as text, DOT or JSON",
                     description=DESCRIPTION, handler=run)
    p.add_argument("workflow", metavar="WORKFLOW")
    add_log_arguments(p, required=False)
    p.add_argument("--workflow-col", metavar="W", help="with --log: column holding the workflow id")
    p.add_argument("--store", metavar="PATH|DSN", help="read the signal history from this store")
    p.add_argument("--from-ms", type=int, help="with --store: signals at or after this time (ms since epoch)")
    p.add_argument("--to-ms", type=int, help="with --store: signals before this time")
    p.add_argument("--wfcommons", metavar="FILE.json", help="a WfCommons workflow instance")
    p.add_argument("--runs", type=int, default=20, help="with --wfcommons: runs to replay (default 20)")
    p.add_argument("--jitter", type=float, default=0.1, help="with --wfcommons: lognormal runtime jitter (default 0.1)")
    p.add_argument("--dispatch-ms", type=float, default=1000.0,
                   help="with --wfcommons: each task starts a delay drawn from [0, this) ms after its last parent "
                        "finished, as an engine polling for finished tasks (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="with --wfcommons: seed of the replays' jitter and delays")
    p.add_argument("--no-lineage", action="store_true",
                   help="with --wfcommons: leave the files out of the signals (timing-only reconstruction)")
    p.add_argument("--format", choices=("text", "dot", "json"), default="text")
    p.add_argument("--window-runs", type=int, default=500, help="runs the fingerprint keeps (default 500)")
    p.add_argument("--window-ms", type=int, help="also age out runs that ended longer ago than this")
    p.add_argument("--min-probability", type=float, default=0.01, help="drop rarer edges as noise (default 0.01)")
    p.add_argument("--failures", action="store_true",
                   help="print the causal failure graph of the signals instead (fingerprint.failures): which "
                        "failures make which tasks fail, P(fail | parent) against the base rate, confidence")
    p.add_argument("--lag-s", type=float, default=30.0, help="with --failures: how long a failure counts as a "
                                                              "parent's (default 30 s)")


def _signals(args: argparse.Namespace):
    sources = [name for name in ("log", "store", "wfcommons") if getattr(args, name)]
    if len(sources) != 1:
        raise UsageError("give exactly one of --log, --store, --wfcommons")
    if args.log:
        return log_signals(args, workflow_id=args.workflow, workflow_col=args.workflow_col)
    if args.wfcommons:
        from fingerprint.traces import TraceError, read_wfcommons

        path = Path(args.wfcommons)
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
        try:
            return list(read_wfcommons(path, workflow_id=args.workflow, runs=args.runs, jitter=args.jitter,
                                       dispatch_ms=args.dispatch_ms, seed=args.seed, lineage=not args.no_lineage))
        except (TraceError, KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{path}: not a usable WfCommons instance: {err}") from None
    from fingerprint.store import SignalStore, is_dsn

    if not is_dsn(args.store) and not Path(args.store).is_file():
        raise UsageError(f"no such store: {args.store}")
    try:
        store = SignalStore(args.store)
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    try:
        known = store.workflows()
        if args.workflow not in known:
            raise UsageError(f"unknown workflow {args.workflow!r} in {args.store}; known: {', '.join(known) or 'none'}")
        return list(store.query(args.workflow, start_ms=args.from_ms, end_ms=args.to_ms))
    finally:
        store.close()


def show_failures(args: argparse.Namespace) -> int:
    from fingerprint.failures import FailureGraph

    graph = FailureGraph(lag_s=args.lag_s)
    for signal in _signals(args):
        if signal.get("workflow_id") == args.workflow:
            graph.learn_one(signal)
    print({"text": graph.describe, "dot": graph.to_dot, "json": graph.to_json}[args.format]())
    return 0


def run(args: argparse.Namespace) -> int:
    from fingerprint.temporal import Fingerprint, Window

    if args.failures:
        return show_failures(args)

    try:
        window = Window(runs=args.window_runs, ms=args.window_ms)
    except ValueError as err:
        raise UsageError(str(err)) from None
    fp = Fingerprint(args.workflow, window=window)
    fp.learn_many(_signals(args))
    if fp.accepted == 0:
        raise UsageError(f"no signals of workflow {args.workflow!r}"
                         + (f" (bad signals: {fp.issues})" if fp.issues else ""))
    if args.format == "text":
        print(fp.render(args.min_probability), end="")
    elif args.format == "dot":
        print(fp.to_dot(args.min_probability), end="")
    else:
        print(json.dumps(fp.describe(args.min_probability), indent=2))
    return 0
