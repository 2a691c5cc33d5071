"""Offline anomaly scoring: replay a series through the detector the control flow uses, and grade it.

``liquid evaluate anomaly`` (wired in ``deploy/evaluate_anomaly.py``) calls
`evaluate_anomaly`: read a CSV, feed each row's value columns as one feature
dict to `prediction.onset.OnsetDetector` in file order (score, then learn),
write one output row per input row, and, given labelled windows, report how
well the alarms match them. The default threshold (0.5) is the one NAB-style
scoring picks on the NAB corpus (``bench/nab.py``).

Input
-----
Timestamps are ISO 8601 (a naive one is UTC) or epoch numbers: seconds, or
milliseconds when the value is ≥ 10¹¹ (that is after 1973 in ms, but the year
5138 in s). Labels use the same formats. An empty, ``nan``, ``null`` or
``NA`` value is a gap in that column: the detector skips that feature for the
row; a row with no values at all scores 0. Anything else that is not a number
is an error, reported with its line.

Metrics
-------
Alarms are the alert episodes that `prediction.episodes.EpisodeDetector`
(the flow's code) makes of the flagged rows, with a minimum gap of 30 s or
three sampling intervals, whichever is longer.

* **recall** (window-wise, as in NAB): a labelled window ``[start, end]`` is
  detected when at least one row inside it is flagged; recall is detected
  windows / windows.
* **delay** of a detected window: time of its first flagged row − its start.
* **precision** (event-wise): an alarm is true when its span
  ``[first, last anomalous row]`` overlaps a window; precision is true alarms /
  alarms. Event-wise, so a long labelled level shift flagged for a minute is one
  true alarm, not sixty, and one noisy false episode is one false alarm.
* **F1** of that precision and recall.
* **point precision**: flagged rows inside windows / flagged rows, for reference.

>>> import math
>>> times = [60.0 * t for t in range(600)]                   # one row a minute
>>> rows = [{"v": math.sin(t / 7.0) + (6.0 if t == 400 else 0.0)} for t in range(600)]
>>> scored = score_rows(times, rows)
>>> [t for t, flag in zip(times, scored.flags) if flag]
[24000.0]
>>> report = grade(times, scored.flags, scored.alarms, [(23880.0, 24120.0)])
>>> report.recall, report.precision, report.windows[0].delay_s
(1.0, 1.0, 120.0)
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from prediction.onset import DEFAULT_THRESHOLD, OnsetDetector
from prediction.episodes import EpisodeDetector

MISSING = {"", "nan", "null", "none", "na", "n/a"}
_MS_EPOCH = 1e11


class SeriesError(ValueError):
    """Input the user can fix: a missing column, a bad timestamp, malformed labels."""


def parse_time(text) -> float:
    """Seconds from an ISO 8601 string or an epoch number (ms when ≥ 10¹¹).

    >>> parse_time("2024-01-01T00:00:01Z"), parse_time("1704067201"), parse_time(1704067201000)
    (1704067201.0, 1704067201.0, 1704067201.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            value = float(s)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(s)
            except ValueError:
                raise SeriesError(f"not a timestamp (ISO 8601 or epoch number): {s!r}") from None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=timezone.utc)
            return stamp.timestamp()
    if not math.isfinite(value):
        raise SeriesError(f"not a timestamp: {text!r}")
    return value / 1000.0 if abs(value) >= _MS_EPOCH else value


def parse_value(text: str) -> float:
    """A float; NaN for a gap (empty, nan, null, NA, or ±inf)."""
    s = text.strip()
    if s.lower() in MISSING:
        return math.nan
    value = float(s)  # ValueError for junk: the caller reports the line
    return value if math.isfinite(value) else math.nan


@dataclass
class Series:
    """A CSV read for scoring: the timestamps as written, in seconds, and one feature dict per row."""

    time_col: str
    value_cols: list
    time_text: list = field(default_factory=list)
    times_s: list = field(default_factory=list)
    rows: list = field(default_factory=list)


def read_series(path, time_col: str, value_cols: Sequence[str]) -> Series:
    """Read ``path``; `SeriesError` on anything the user must fix."""
    path = Path(path)
    if not value_cols:
        raise SeriesError("give at least one --value-col")
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as err:
        raise SeriesError(f"cannot read {path}: {err.strerror or err}") from None
    series = Series(time_col, list(value_cols))
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in [time_col, *value_cols] if c not in header]
        if missing:
            raise SeriesError(f"{path}: no column {', '.join(map(repr, missing))}; columns: {', '.join(header) or 'none'}")
        for row in reader:
            line = reader.line_num
            stamp = row.get(time_col)
            if stamp is None or not stamp.strip():
                raise SeriesError(f"{path}:{line}: empty timestamp in {time_col!r}")
            try:
                t = parse_time(stamp)
            except SeriesError as err:
                raise SeriesError(f"{path}:{line}: {err}") from None
            values = {}
            for col in value_cols:
                cell = row.get(col)
                try:
                    values[col] = math.nan if cell is None else parse_value(cell)
                except ValueError:
                    raise SeriesError(f"{path}:{line}: column {col!r}: not a number: {cell!r}") from None
            series.time_text.append(stamp)
            series.times_s.append(t)
            series.rows.append(values)
    if not series.rows:
        raise SeriesError(f"{path}: no data rows")
    return series


def read_labels(path) -> list[tuple[float, float]]:
    """A JSON list of ``[start, end]`` windows, in seconds."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise SeriesError(f"cannot read {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise SeriesError(f"{path}: not JSON: {err.msg} (line {err.lineno})") from None
    if not isinstance(raw, list):
        raise SeriesError(f"{path}: expected a JSON list of [start, end] windows")
    windows = []
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 2):
            raise SeriesError(f"{path}: window {i}: expected [start, end], got {item!r}")
        try:
            start, end = parse_time(item[0]), parse_time(item[1])
        except SeriesError as err:
            raise SeriesError(f"{path}: window {i}: {err}") from None
        if end < start:
            raise SeriesError(f"{path}: window {i}: end before start")
        windows.append((start, end))
    return windows


@dataclass
class Scored:
    """Per-row scores and flags, and the alarms (episode spans in seconds)."""

    scores: list
    flags: list
    alarms: list


def _median_spacing(times_s: Sequence[float]) -> float:
    gaps = sorted(b - a for a, b in zip(times_s, times_s[1:]) if b > a)
    return gaps[len(gaps) // 2] if gaps else 1.0


def score_rows(times_s: Sequence[float], rows: Sequence[dict], threshold: float = DEFAULT_THRESHOLD,
               detector: Optional[OnsetDetector] = None) -> Scored:
    """Replay rows through the detector (score, then learn) and the flow's episode logic."""
    detector = detector or OnsetDetector(threshold=threshold)
    gap_s = max(30.0, 3.0 * _median_spacing(times_s))
    episodes = EpisodeDetector("series", close_threshold=detector.threshold, min_gap_s=gap_s)
    scores, flags, alerts = [], [], []
    for t, row in zip(times_s, rows):
        result = detector.score_then_learn_one(row, t)
        scores.append(result.score)
        flags.append(result.is_anomaly)
        alerts.extend(episodes.observe(int(round(t * 1000)), result))
    alerts.extend(episodes.flush())
    return Scored(scores, flags, _alarm_spans(alerts))


def _alarm_spans(alerts) -> list:
    """Episode spans in seconds, from the closing Alert records (the opening ones have no end)."""
    return [(a["start_ts_ms"] / 1000.0, a["end_ts_ms"] / 1000.0) for a in alerts if a["end_ts_ms"] is not None]


def write_scores(path, series: Series, scored: Scored) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([series.time_col, "score", "anomaly"])
        for stamp, score, flag in zip(series.time_text, scored.scores, scored.flags):
            writer.writerow([stamp, f"{score:.9f}", int(flag)])


@dataclass
class WindowResult:
    start_s: float
    end_s: float
    delay_s: Optional[float]   # None: missed

    @property
    def detected(self) -> bool:
        return self.delay_s is not None


@dataclass
class DetectionReport:
    """How flagged rows and alarms match labelled windows (definitions in the module docstring)."""

    windows: list
    alarms: int
    true_alarms: int
    flagged: int
    flagged_in_windows: int
    duration_s: float

    @property
    def recall(self) -> Optional[float]:
        return sum(w.detected for w in self.windows) / len(self.windows) if self.windows else None

    @property
    def precision(self) -> Optional[float]:
        return self.true_alarms / self.alarms if self.alarms else None

    @property
    def f1(self) -> Optional[float]:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def point_precision(self) -> Optional[float]:
        return self.flagged_in_windows / self.flagged if self.flagged else None

    @property
    def false_alarms_per_hour(self) -> float:
        return (self.alarms - self.true_alarms) * 3600.0 / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def delays_s(self) -> list:
        return [w.delay_s for w in self.windows if w.detected]

    def lines(self, time_text=None) -> list[str]:
        """The report as text lines (``time_text`` formats a time in seconds)."""
        fmt = (lambda x: "n/a" if x is None else f"{x:.3f}")
        show = time_text or (lambda t: f"{t:g}")
        detected = sum(w.detected for w in self.windows)
        out = [
            f"windows {len(self.windows)}, detected {detected}: recall {fmt(self.recall)} (window-wise)",
            f"alarms {self.alarms}, true {self.true_alarms}: precision {fmt(self.precision)} "
            f"(event-wise: alarm episodes overlapping a window)",
            f"F1 {fmt(self.f1)}",
            f"point precision {fmt(self.point_precision)} ({self.flagged_in_windows}/{self.flagged} flagged rows "
            f"inside windows); false alarms per hour {self.false_alarms_per_hour:.2f}",
        ]
        for i, w in enumerate(self.windows):
            what = f"detected after {w.delay_s:g} s" if w.detected else "missed"
            out.append(f"window {i} [{show(w.start_s)} .. {show(w.end_s)}]: {what}")
        return out


def grade(times_s: Sequence[float], flags: Sequence[bool], alarms: Sequence[tuple],
          windows: Sequence[tuple]) -> DetectionReport:
    """Match flagged rows and alarm spans (seconds) against labelled windows (seconds)."""
    results = []
    for start, end in windows:
        first = next((t for t, f in zip(times_s, flags) if f and start <= t <= end), None)
        results.append(WindowResult(start, end, None if first is None else first - start))
    true_alarms = sum(any(a0 <= end and a1 >= start for start, end in windows) for a0, a1 in alarms)
    flagged = [t for t, f in zip(times_s, flags) if f]
    inside = sum(any(start <= t <= end for start, end in windows) for t in flagged)
    duration = (max(times_s) - min(times_s)) if times_s else 0.0
    return DetectionReport(results, len(alarms), true_alarms, len(flagged), inside, duration)


def evaluate_anomaly(csv_path, time_col: str, value_cols: Sequence[str], out_path,
                     labels_path=None, threshold: Optional[float] = None) -> tuple[Scored, Optional[DetectionReport]]:
    """The whole ``liquid evaluate anomaly``: score, write, and grade when labels are given."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if not 0.0 < threshold < 1.0:
        raise SeriesError(f"--threshold must be in (0, 1), got {threshold}")
    series = read_series(csv_path, time_col, value_cols)
    windows = read_labels(labels_path) if labels_path else None
    scored = score_rows(series.times_s, series.rows, threshold)
    try:
        write_scores(out_path, series, scored)
    except OSError as err:
        raise SeriesError(f"cannot write {out_path}: {err.strerror or err}") from None
    report = grade(series.times_s, scored.flags, scored.alarms, windows) if windows is not None else None
    return scored, report


def replay_telemetry(records: Sequence[dict], models=None):
    """Replay Telemetry records through `TelemetryModels` (the flow's per-node bundle).

    Returns ``(times_s, flags, alarms)`` ready for `grade`.
    """
    from prediction.telemetry_models import TelemetryModels

    models = models or TelemetryModels.for_node(records[0]["node_id"] if records else "node")
    times, flags, alerts = [], [], []
    for record in records:
        assessment, closed = models.score_then_learn_one(record)
        times.append(record["ts_ms"] / 1000.0)
        flags.append(assessment.anomaly.is_anomaly)
        alerts.extend(closed)
    alerts.extend(models.flush())
    return times, flags, _alarm_spans(alerts)
