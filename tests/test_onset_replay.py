"""The onset rule replayed on recorded evidence gives the detector's own scores, for any setting."""

from __future__ import annotations

import pickle

import pytest

from prediction.metric_series import metric_series
from prediction.onset import OnsetDetector

SETTINGS = [{}, {"onset_z": 4.5, "spike_z": 12.0, "shift_z": 5.0, "release_after": 36},
            {"threshold": 0.3, "quiet_s": 3600.0, "warmup": 200}]


def _rows(kind, seed):
    s = metric_series(kind, seed)
    rows = list(zip(s.times_s, s.values))
    # Duplicated and out-of-order times (as in some NAB files): scored, never learned.
    return rows[:700] + [rows[699], rows[650]] + rows[700:]


@pytest.mark.parametrize("kind", ["spike", "level_shift", "burst"])
@pytest.mark.parametrize("settings", SETTINGS)
def test_replaying_evidence_reproduces_score_then_learn_one(kind, settings):
    rows = _rows(kind, 1)
    recorder = OnsetDetector()
    recorded = [(*recorder.evidence_then_learn_one({"value": v}, t), t) for t, v in rows]
    assert sum(not learned for _, _, learned, _ in recorded) == 2
    live, replay = OnsetDetector(**settings), OnsetDetector(**settings)
    expected = [live.score_then_learn_one({"value": v}, t) for t, v in rows]
    replayed = [replay.decide_one(evidence, t, update=learned) for evidence, _, learned, t in recorded]
    assert [(r.score, r.is_anomaly) for r in expected] == replayed
    assert any(flag for _, flag in replayed)
    # The learned state is the recorder's whatever the settings: deciding changes only the quiet period.
    assert pickle.dumps(live.features) == pickle.dumps(recorder.features)


def test_a_decision_without_update_changes_nothing():
    detector = OnsetDetector()
    rows = _rows("spike", 2)
    recorded = [detector.evidence_then_learn_one({"value": v}, t) for t, v in rows]
    probe = OnsetDetector()
    onset = next(i for i, ((e, _, learned), (t, _)) in enumerate(zip(recorded, rows))
                 if probe.decide_one(e, t, update=learned)[1])
    before = pickle.dumps(detector)
    score, flag = detector.decide_one(recorded[onset][0], rows[onset][0], update=False)
    assert flag and pickle.dumps(detector) == before
    detector.decide_one(recorded[onset][0], rows[onset][0])
    assert detector.quiet_until > rows[onset][0]
