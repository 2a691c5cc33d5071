"""``liquid evaluate anomaly``: offline scoring of a CSV through the flow's detector."""

from __future__ import annotations

import csv
import json
import math
import random
from datetime import datetime, timezone

import pytest

from deploy.cli import main
from prediction.evaluate_anomaly import SeriesError, parse_time, read_labels

T0 = 1_700_000_000.0


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _write_series(path, n=900, spike_at=600, shift_at=None, time_format="iso"):
    """Two noisy columns with a spike in ``a``; a few gaps (empty, NaN) and jittered timestamps."""
    rng = random.Random(1)
    stamps = []
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["when", "a", "b", "note"])
        t = T0
        for i in range(n):
            t += 1.0 + rng.uniform(-0.2, 0.2)
            a = 20.0 + rng.gauss(0, 0.5) + (8.0 if i == spike_at else 0.0)
            if shift_at is not None and i >= shift_at:
                a += 6.0
            b = 100.0 + rng.gauss(0, 2.0)
            cell_a = "" if i % 101 == 50 else f"{a:.4f}"
            cell_b = "NaN" if i % 97 == 10 else f"{b:.3f}"
            stamp = _iso(t) if time_format == "iso" else str(int(t * 1000))
            writer.writerow([stamp, cell_a, cell_b, "x"])
            stamps.append((stamp, t))
    return stamps


def _read_out(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_scores_every_row_in_order_and_grades_labels(tmp_path, capsys):
    data, out, labels = tmp_path / "series.csv", tmp_path / "scores.csv", tmp_path / "labels.json"
    stamps = _write_series(data)
    spike_t = stamps[600][1]
    labels.write_text(json.dumps([[_iso(spike_t - 1), _iso(spike_t + 2)], [_iso(T0 + 100), _iso(T0 + 110)]]))
    code = main(["evaluate", "anomaly", "--csv", str(data), "--time-col", "when", "--value-col", "a",
                 "--value-col", "b", "--out", str(out), "--labels", str(labels)])
    assert code == 0
    rows = _read_out(out)
    assert list(rows[0]) == ["when", "score", "anomaly"]
    assert [r["when"] for r in rows] == [s for s, _ in stamps]
    scores = [float(r["score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(r["anomaly"] in ("0", "1") for r in rows)
    assert rows[600]["anomaly"] == "1"
    assert sum(r["anomaly"] == "1" for r in rows) <= 5
    text = capsys.readouterr().out
    assert "recall 0.500" in text               # the spike window is found, the empty one is not
    assert "precision 1.000" in text and "F1 0.667" in text
    assert "window 0" in text and "detected after" in text and "window 1" in text and "missed" in text


def test_epoch_milliseconds_and_a_threshold(tmp_path, capsys):
    data, out = tmp_path / "series.csv", tmp_path / "scores.csv"
    _write_series(data, time_format="ms", shift_at=500)
    assert main(["evaluate", "anomaly", "--csv", str(data), "--time-col", "when", "--value-col", "a",
                 "--out", str(out), "--threshold", "0.6"]) == 0
    rows = _read_out(out)
    assert len(rows) == 900
    flags = [r["anomaly"] == "1" for r in rows]
    assert flags[500] or flags[501]
    strict = tmp_path / "strict.csv"
    assert main(["evaluate", "anomaly", "--csv", str(data), "--time-col", "when", "--value-col", "a",
                 "--out", str(strict), "--threshold", "0.9"]) == 0
    assert sum(r["anomaly"] == "1" for r in _read_out(strict)) < sum(flags)
    assert "scored 900 rows" in capsys.readouterr().out


def test_rows_without_values_score_zero(tmp_path):
    data, out = tmp_path / "gappy.csv", tmp_path / "scores.csv"
    data.write_text("t,v\n" + "".join(f"{i},{'' if i % 3 == 0 else math.sin(i)}\n" for i in range(100)))
    assert main(["evaluate", "anomaly", "--csv", str(data), "--time-col", "t", "--value-col", "v",
                 "--out", str(out)]) == 0
    rows = _read_out(out)
    assert len(rows) == 100 and all(float(r["score"]) == 0.0 for r in rows[::3])


@pytest.mark.parametrize("content, extra, message", [
    ("when,a\n2024-01-01T00:00:00Z,1\n", ["--value-col", "zzz"], "no column 'zzz'"),
    ("when,a\nyesterday,1\n", [], "not a timestamp"),
    ("when,a\n2024-01-01T00:00:00Z,abc\n", [], "not a number"),
    ("when,a\n", [], "no data rows"),
    ("when,a\n1,1\n", ["--threshold", "1.5"], "threshold must be in (0, 1)"),
    ("when,a\n1,1\n", ["--labels", "LABELS"], "not JSON"),
    ("when,a\n1,1\n", ["--csv", "/nonexistent/file.csv"], "cannot read"),
])
def test_bad_input_is_a_one_line_error_with_exit_2(tmp_path, capsys, content, extra, message):
    data = tmp_path / "in.csv"
    data.write_text(content)
    bad_labels = tmp_path / "labels.json"
    bad_labels.write_text("[[1, 2], oops")
    extra = [str(bad_labels) if e == "LABELS" else e for e in extra]
    argv = ["evaluate", "anomaly", "--csv", str(data), "--time-col", "when", "--out", str(tmp_path / "o.csv")]
    if "--value-col" not in extra:
        argv += ["--value-col", "a"]
    code = main(argv + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("liquid: error:")


def test_time_and_label_formats(tmp_path):
    assert parse_time("2024-01-01T00:00:00") == parse_time("2024-01-01T00:00:00+00:00") == 1704067200.0
    assert parse_time("1704067200000") == parse_time("1704067200") == 1704067200.0
    assert parse_time("12.5") == 12.5                        # relative seconds stay seconds
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps([["2024-01-01T00:00:00Z", 1704067260000]]))
    assert read_labels(labels) == [(1704067200.0, 1704067260.0)]
    labels.write_text(json.dumps([[5, 1]]))
    with pytest.raises(SeriesError, match="end before start"):
        read_labels(labels)
