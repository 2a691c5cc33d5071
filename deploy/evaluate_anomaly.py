"""``liquid evaluate anomaly``: score a CSV series offline with the control flow's anomaly detector.

Only the command-line wiring lives here; the work is `prediction.evaluate_anomaly`.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from deploy.errors import UsageError

DESCRIPTION = """\
Replay a CSV series through the onset detector (prediction.onset.OnsetDetector:
a seasonal level prediction per --value-col, an anomaly likelihood of the recent
prediction error, and one report per incident: scores are held at 0 for a day
of event time after an onset) and write OUT with the input's timestamp column,
`score` in [0,1) and `anomaly` (0/1 at the threshold), one row per input row,
in input order.

Timestamps: ISO 8601 or epoch seconds/milliseconds (ms when >= 1e11).
Empty or NaN values are gaps. With --labels (a JSON list of [start, end]
windows, same time format) it prints window-wise recall, event-wise
precision over alarm episodes, F1, point precision and the detection delay
of each window.
"""


def register(tree) -> None:
    p = tree.command("evaluate anomaly", help="score a CSV series with the flow's anomaly detector",
                     handler=run, description=DESCRIPTION)
    p.add_argument("--csv", required=True, metavar="FILE", help="input CSV with a header row")
    p.add_argument("--time-col", required=True, metavar="T", help="timestamp column")
    p.add_argument("--value-col", required=True, action="append", metavar="V", dest="value_cols",
                   help="value column to score (repeat for several)")
    p.add_argument("--out", required=True, metavar="OUT.csv", help="where to write the scores")
    p.add_argument("--labels", metavar="FILE.json", help="labelled anomaly windows: [[start, end], ...]")
    p.add_argument("--threshold", type=float, metavar="X",
                   help="score at or above which a row is an anomaly onset (default 0.5: the recent "
                        "prediction error is 5 sigma above its long-run level; the threshold NAB-style "
                        "scoring picks on the NAB corpus)")


def _time_text(seconds: float) -> str:
    if seconds > 1e8:  # an epoch time: show it as UTC
        return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return f"{seconds:g}"


def run(args: argparse.Namespace) -> int:
    from prediction.evaluate_anomaly import (
        DEFAULT_THRESHOLD,
        SeriesError,
        evaluate_anomaly,
    )

    try:
        scored, report = evaluate_anomaly(args.csv, args.time_col, args.value_cols, args.out,
                                          labels_path=args.labels, threshold=args.threshold)
    except SeriesError as err:
        raise UsageError(str(err)) from None
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    print(f"scored {len(scored.scores)} rows -> {args.out}: {sum(scored.flags)} anomalous at threshold "
          f"{threshold:g}, {len(scored.alarms)} alarm episodes")
    if report is not None:
        for line in report.lines(_time_text):
            print(line)
    return 0
