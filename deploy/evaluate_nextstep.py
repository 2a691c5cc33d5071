"""``liquid evaluate next-step``: prequential next-step accuracy of the predictor on a CSV event log.

Only wiring: reading the log is `fingerprint.traces.read_event_log`, the
evaluation is `prediction.evaluate_nextstep.evaluate_next_step`, and the
predictor is the `NextStepPredictor` the workflow flow runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deploy.errors import UsageError

DESCRIPTION = """\
Replay an event log in global timestamp order through the next-step predictor
the workflow flow uses, and score it prequentially: each prediction is made from
a case's prefix and scored against what happened next BEFORE the predictor
learns from it.

  accuracy          for every event of a case after its first: was the activity
                    the top-1 prediction made at the case's previous event?
                    (an event with no prediction counts as a miss)
  top3_accuracy     ... among the top 3?
  predictions       number of such events
  end_accuracy      after each event of a case, the question "does the case end
                    now?" is answered yes iff <end> is the top-1 candidate; the
                    share of these points answered right (every case in a log
                    ends after its last event). end_precision / end_recall are
                    over the points answered yes / where the case did end.
  baseline_*        the same for a first-order Markov baseline: the most
                    frequent next activity after the last one, learned in the
                    same run from the same events.

With --attr-col NAME (repeatable) the non-empty values of those columns (case
or event attributes) ride on the signals as `attributes`, and the predictor
conditions on the latest value of each, as it does in the workflow flow.

An event is an activity's start. With one timestamp per event (no
--lifecycle-col), each activity is taken to run from its own timestamp to the
case's next event (zero for the last one); with --lifecycle-col, "start" rows
start activities, "complete" rows finish them (a complete with no start is an
instant), other transitions are ignored.
"""


def register(tree) -> None:
    p = tree.command("evaluate next-step", help="prequential next-step accuracy on a CSV event log, vs a Markov baseline",
                     description=DESCRIPTION, handler=run)
    add_log_arguments(p, required=True)
    p.add_argument("--history", type=int, default=None,
                   help="longest task history the predictor conditions on (default: as in the flow, 4)")
    p.add_argument("--order", type=int, default=2,
                   help="longest context of the fingerprint's own sequence model, used for expected start times (default 2)")
    p.add_argument("--window-runs", type=int, default=500, help="runs the fingerprint keeps (default 500)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--progress-every", type=int, default=100_000, metavar="N",
                   help="progress line on stderr every N signals (0: none)")


def add_log_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    """The CSV event-log options shared with ``liquid fingerprint show``."""
    p.add_argument("--log", "--from-log", dest="log", required=required, metavar="FILE.csv",
                   help="event log, one row per event (--from-log is the same option)")
    p.add_argument("--case-col", required=required, metavar="C", help="column with the case (run) id")
    p.add_argument("--activity-col", required=required, metavar="A", help="column with the activity (task)")
    p.add_argument("--time-col", required=required, metavar="T",
                   help="column with the timestamp: ISO 8601, or epoch seconds / ms")
    p.add_argument("--lifecycle-col", metavar="L", help="column with start/complete, if the log has one")
    p.add_argument("--time-format", metavar="FMT", help="strptime format for other timestamps, e.g. %%d-%%m-%%Y:%%H.%%M")
    p.add_argument("--delimiter", help="CSV delimiter (default: sniffed from the header)")
    p.add_argument("--attr-col", action="append", default=[], metavar="NAME",
                   help="a case or event attribute column; its values go into the signals' attributes, which the "
                        "predictor conditions on (repeatable)")


def log_signals(args: argparse.Namespace, workflow_id: str | None = None, workflow_col: str | None = None):
    """The log's signals; bad input becomes a `UsageError` when iteration starts."""
    from fingerprint.traces import TraceError, read_event_log

    path = Path(args.log)
    if not path.is_file():
        raise UsageError(f"no such log file: {path}")
    for name in ("case_col", "activity_col", "time_col"):
        if not getattr(args, name):
            raise UsageError(f"--{name.replace('_', '-')} is required with --log")
    signals = read_event_log(path, args.case_col, args.activity_col, args.time_col,
                             lifecycle_col=args.lifecycle_col, time_format=args.time_format,
                             delimiter=args.delimiter, workflow_id=workflow_id, workflow_col=workflow_col,
                             attr_cols=getattr(args, "attr_col", None) or ())

    def checked():
        try:
            yield from signals
        except (TraceError, UnicodeDecodeError) as err:
            raise UsageError(str(err).splitlines()[0]) from None

    return checked()


def run(args: argparse.Namespace) -> int:
    from fingerprint.temporal import Window
    from prediction.evaluate_nextstep import evaluate_next_step
    from prediction.nextstep import NextStepPredictor

    if args.order < 1 or args.window_runs < 1 or (args.history is not None and args.history < 1):
        raise UsageError("--order, --window-runs and --history must be at least 1")
    options = {"order": args.order, "window": Window(runs=args.window_runs)}
    if args.history is not None:
        options["history"] = args.history

    def progress(n: int, seconds: float) -> None:
        print(f"liquid: evaluated {n:,} signals ({n / max(seconds, 1e-9):,.0f}/s)", file=sys.stderr, flush=True)

    report = evaluate_next_step(log_signals(args), make_predictor=lambda wf: NextStepPredictor(wf, **options),
                                progress=progress if args.progress_every > 0 else None,
                                progress_every=max(args.progress_every, 1))
    if report["signals"] == 0:
        raise UsageError(f"{args.log}: no events")
    report["log"] = str(args.log)
    if args.json:
        print(json.dumps(report))
    else:
        print(render(report))
    return 0


def render(r: dict) -> str:
    def pct(x):
        return f"{x:7.1%}"

    lines = [f"next-step evaluation of {r['log']} (prequential: predict, score, then learn)",
             f"  {r['cases']} cases, {r['events']} events, {r['predictions']} predictions scored "
             f"(every event after a case's first)",
             f"  {'':24}{'predictor':>10}{'baseline':>10}",
             f"  {'top-1 accuracy':<24}{pct(r['accuracy']):>10}{pct(r['baseline_accuracy']):>10}",
             f"  {'top-3 accuracy':<24}{pct(r['top3_accuracy']):>10}{pct(r['baseline_top3_accuracy']):>10}",
             f"  {'case-end accuracy':<24}{pct(r['end_accuracy']):>10}{pct(r['baseline_end_accuracy']):>10}",
             f"  {'case-end precision':<24}{pct(r['end_precision']):>10}{pct(r['baseline_end_precision']):>10}",
             f"  {'case-end recall':<24}{pct(r['end_recall']):>10}{pct(r['baseline_end_recall']):>10}"]
    if "log_loss" in r:
        lines.append(f"  calibration over all resolved predictions (next task or <end>): log-loss {r['log_loss']:.3f}, "
                     f"Brier {r['brier']:.3f}, ECE {r['ece']:.3f}")
    lines.append(f"  {r['signals']:,} signals in {r['seconds']:.2f} s ({r['signals_per_s']:,.0f}/s)")
    if r.get("issues"):
        lines.append("  bad signals: " + ", ".join(f"{k}={v}" for k, v in sorted(r["issues"].items())))
    return "\n".join(lines)
