"""The NAB protocol: a fixed split of the series into two folds, and scores at a carried-over threshold."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

from prediction.nab import FileLayout, category, corpus_score, fold_of, load_corpus

ROOT = Path(__file__).resolve().parent.parent

NAMES = [f"{cat}/{kind}_{i}.csv" for cat, kind, n in
         (("realTweets", "Twitter_volume", 10), ("realTraffic", "speed", 7), ("artificialNoAnomaly", "art", 5))
         for i in range(n)]


def test_each_category_is_split_evenly_and_the_split_depends_on_names_only():
    folds = fold_of(NAMES)
    for cat in {category(n) for n in NAMES}:
        members = [folds[n] for n in NAMES if category(n) == cat]
        assert members.count("A") - members.count("B") in (0, 1), (cat, members)
    assert fold_of(list(reversed(NAMES))) == folds
    # Another category's files do not move a series to the other fold.
    assert {n: f for n, f in fold_of(NAMES + ["realAdExchange/x.csv"]).items() if n in folds} == folds
    assert set(folds.values()) == {"A", "B"}


def test_a_salt_gives_another_split_of_the_same_kind():
    assert fold_of(NAMES, "") == fold_of(NAMES)
    others = [fold_of(NAMES, f"split{k}:") for k in range(1, 6)]
    assert any(other != fold_of(NAMES) for other in others)
    assert fold_of(list(reversed(NAMES)), "split1:") == others[0]
    for other in others:
        for cat in {category(n) for n in NAMES}:
            members = [other[n] for n in NAMES if category(n) == cat]
            assert members.count("A") - members.count("B") in (0, 1), (cat, members)


def test_a_carried_threshold_scores_what_the_sweep_scores_there():
    rng = random.Random(2)
    stamps = [f"2024-01-01 {h:02d}:{m:02d}:00" for h in range(10) for m in range(60)]
    files = []
    for k in range(3):
        layout = FileLayout.of(stamps, [(stamps[300 + 50 * k], stamps[360 + 50 * k])])
        files.append((layout, [rng.random() for _ in stamps]))
    swept = corpus_score(files)
    assert corpus_score(files, swept.threshold) == swept
    # Any other threshold scores no more than the swept one.
    for threshold in (0.5, 0.9, 0.99, 2.0):
        assert corpus_score(files, threshold).score <= swept.score
    assert corpus_score(files, 2.0).score == pytest.approx(0.0)          # no detection: the null detector
    assert math.isnan(corpus_score([(FileLayout.of(stamps, []), [0.0] * len(stamps))]).score)


def _tiny_corpus(root: Path) -> None:
    """Two categories of two series each, every series with a spike inside its one window."""
    windows = {}
    rng = random.Random(0)
    for cat in ("realTweets", "realTraffic"):
        for i in range(2):
            name = f"{cat}/s{i}.csv"
            stamps = [f"2024-01-{1 + j // 288:02d} {(j % 288) // 12:02d}:{5 * (j % 12):02d}:00" for j in range(1500)]
            values = [10.0 + rng.gauss(0.0, 1.0) for _ in stamps]
            values[1000 + 50 * i] += 40.0
            path = root / "data" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in zip(stamps, values)))
            windows[name] = [[stamps[980 + 50 * i] + ".000000", stamps[1040 + 50 * i] + ".000000"]]
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))


def test_the_benchmark_tunes_on_one_fold_and_reports_the_other(tmp_path, monkeypatch, capsys):
    _tiny_corpus(tmp_path)
    assert len(load_corpus(tmp_path)) == 4
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("nab", None)
    import nab as bench
    monkeypatch.setattr(bench, "GRID", {"warmup": (5000, 30)})   # warming up for 5000 rows: never scoring
    figures = bench.nab_figures(tmp_path, tune_on=("A", "B"), splits=2)
    sys.modules.pop("nab", None)
    assert figures["nab_files"] == 4 and figures["nab_score"] > 50.0
    for tuned, held in (("A", "B"), ("B", "A")):
        assert figures[f"nab_tuned_on_{tuned}_settings"] == {"warmup": 30}
        assert figures[f"nab_heldout_{held}_tuned_on_{tuned}"] > 50.0
        assert f"nab_heldout_{held}_tuned_on_{tuned}_carried_threshold" in figures
    # Two other splits, each tuned on either fold: four held-out figures, beside the defaults' on the same folds.
    assert len(figures["nab_resplit_heldout"]) == 4 and all(h > 50.0 for h in figures["nab_resplit_heldout"])
    assert figures["nab_resplit_defaults_mean"] > 50.0
    assert "held-out" in capsys.readouterr().out


def test_a_resplit_seed_draws_another_family_of_splits(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("nab", None)
    import nab as bench
    sys.modules.pop("nab", None)
    # Family 0 is the splits the benchmark always drew, so earlier figures stay comparable.
    assert [bench.resplit_salt(k) for k in (1, 2)] == ["split1:", "split2:"]
    family = {seed: [fold_of(NAMES, bench.resplit_salt(k, seed)) for k in range(1, 6)] for seed in (0, 1, 2)}
    assert family[0] != family[1] != family[2] != family[0]
    assert family[1] == [fold_of(NAMES, bench.resplit_salt(k, 1)) for k in range(1, 6)]
