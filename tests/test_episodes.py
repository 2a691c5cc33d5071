"""Alert episodes: an Alert when an episode opens, its update when it closes, valid against schemas/alert.avsc."""

from __future__ import annotations

import random

import fastavro
import pytest

from prediction.anomaly import AnomalyResult
from prediction.episodes import EpisodeDetector
from prediction.evaluate_anomaly import replay_telemetry
from prediction.synthetic import inject, normal_telemetry
from prediction.telemetry_models import TelemetryModels
from schemas import load_schema

THRESHOLD = 0.9999


def _result(score, feature="temp", sigma=5.0):
    return AnomalyResult(score, score >= THRESHOLD, {feature: sigma, "other": 0.3})


def _feed(episodes, samples):
    alerts = []
    for ts_s, score in samples:
        alerts += episodes.observe(int(ts_s * 1000), _result(score))
    return alerts


def _closing(alerts):
    return [a for a in alerts if a["end_ts_ms"] is not None]


def _opening(alerts):
    return [a for a in alerts if a["end_ts_ms"] is None]


def test_a_noisy_episode_is_one_alert():
    rng = random.Random(0)
    # 40 s in which the score flickers around the threshold, dipping well below it for up to 10 s.
    samples = [(t, 0.2) for t in range(100)]
    samples += [(100 + t, rng.choice([0.99999, 0.9995, 0.5, 0.99995]) if t % 12 < 8 else 0.3) for t in range(40)]
    samples += [(140 + t, 0.2) for t in range(100)]
    episodes = EpisodeDetector("n1", close_threshold=0.999, min_gap_s=15)
    alerts = _feed(episodes, samples) + episodes.flush()
    assert len(alerts) == 2 and len(_opening(alerts)) == 1
    assert alerts[0]["alert_id"] == alerts[1]["alert_id"]
    alert = _closing(alerts)[0]
    assert alert["start_ts_ms"] >= 100_000 and alert["end_ts_ms"] < 140_000
    assert alert["start_ts_ms"] <= alert["peak_ts_ms"] <= alert["end_ts_ms"]
    assert alert["peak_score"] == 0.99999
    assert alert["samples"] > 1


def test_episodes_apart_by_more_than_the_gap_are_separate_alerts_with_deterministic_ids():
    samples = [(t, 0.99999 if t in (50, 51, 120) else 0.1) for t in range(200)]
    first = _feed(EpisodeDetector("n1", min_gap_s=30), samples)
    again = _feed(EpisodeDetector("n1", min_gap_s=30), samples)
    assert [a["alert_id"] for a in _closing(first)] == ["n1:anomaly:50000", "n1:anomaly:120000"]
    assert [a["alert_id"] for a in _opening(first)] == ["n1:anomaly:50000", "n1:anomaly:120000"]
    assert first == again
    assert [a["samples"] for a in _closing(first)] == [2, 1]


def test_the_alert_opens_at_once_and_its_update_waits_for_the_gap_or_a_flush():
    episodes = EpisodeDetector("n1", min_gap_s=30)
    [opened] = _feed(episodes, [(0, 0.99999)])                            # published on the first sample
    assert opened["start_ts_ms"] == 0 and opened["end_ts_ms"] is None and opened["samples"] == 1
    assert opened["contributing_features"] == ["temp"] and opened["peak_score"] == 0.99999
    assert _feed(episodes, [(10, 0.1), (29, 0.1)]) == []                  # still within the gap
    assert episodes.is_open
    [alert] = episodes.flush()
    assert alert["alert_id"] == opened["alert_id"]
    assert alert["end_ts_ms"] == 0 and not episodes.is_open and episodes.flush() == []


def test_the_gap_closes_an_episode_on_the_next_sample_and_a_new_one_opens_on_the_same_sample():
    episodes = EpisodeDetector("n1", min_gap_s=5)
    _feed(episodes, [(0, 0.99999), (1, 0.99999)])
    closed, opened = _feed(episodes, [(60, 0.99999)])
    assert closed["end_ts_ms"] == 1000 and closed["samples"] == 2
    assert opened["start_ts_ms"] == 60_000 and opened["end_ts_ms"] is None


def test_alerts_match_the_avro_schema():
    episodes = EpisodeDetector("node-7", min_gap_s=5)
    alerts = _feed(episodes, [(0, 0.99999), (1, 0.999995), (20, 0.1)])
    assert len(alerts) == 2
    schema = fastavro.parse_schema(load_schema("Alert"))
    for alert in alerts:
        assert fastavro.validation.validate(alert, schema)
        assert alert["contributing_features"] == ["temp"]
        assert alert["kind"] == "anomaly" and "node-7" in alert["message"]


@pytest.mark.parametrize("kind", ["spike", "level_shift", "stuck"])
def test_one_injected_anomaly_gives_one_alert_through_the_flow_models(kind):
    base = normal_telemetry(n=2400, seed=21)
    stream = inject(base, kind, at_s=1500)
    start, end = stream.windows[0]
    models = TelemetryModels.for_node("node-0")
    alerts = []
    for record in stream.records:
        alerts += models.score_then_learn_one(record)[1]
    alerts += models.flush()
    overlapping = [a for a in _closing(alerts) if a["start_ts_ms"] <= end and a["end_ts_ms"] >= start]
    assert len(overlapping) == 1, [(a["start_ts_ms"] - start, a["end_ts_ms"] - start) for a in overlapping]
    [opened] = [a for a in _opening(alerts) if a["alert_id"] == overlapping[0]["alert_id"]]
    assert opened["start_ts_ms"] - start <= 10_000     # the opening alert is out within 10 s of the onset


def test_replay_alarm_spans_come_from_the_same_episodes():
    stream = inject(normal_telemetry(n=1500, seed=22), "spike", at_s=1000)
    times, flags, alarms = replay_telemetry(stream.records)
    start, end = (w / 1000.0 for w in stream.windows[0])
    assert any(a0 <= end and a1 >= start for a0, a1 in alarms)
    assert len(times) == len(flags) == len(stream.records)


def test_version_1_state_migrates_and_a_newer_one_is_refused():
    import pickle

    from schemas.state import StateVersionError

    episodes = EpisodeDetector("n1", min_gap_s=5)
    _feed(episodes, [(0, 0.99999)])
    old = episodes.__dict__ | {"version": 1}
    restored = EpisodeDetector.__new__(EpisodeDetector)
    restored.__setstate__(old)
    assert restored.version == EpisodeDetector.STATE_VERSION and restored.is_open
    [closed] = _closing(_feed(restored, [(30, 0.1)]))
    assert closed["start_ts_ms"] == 0
    assert pickle.loads(pickle.dumps(episodes)).is_open                  # the current version round-trips
    with pytest.raises(StateVersionError):
        EpisodeDetector.__new__(EpisodeDetector).__setstate__(episodes.__dict__ | {"version": 3})
