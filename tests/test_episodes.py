"""Alert episodes: one Alert record per episode, valid against schemas/alert.avsc."""

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
        alerts += episodes.update(int(ts_s * 1000), _result(score))
    return alerts


def test_a_noisy_episode_is_one_alert():
    rng = random.Random(0)
    # 40 s in which the score flickers around the threshold, dipping well below it for up to 10 s.
    samples = [(t, 0.2) for t in range(100)]
    samples += [(100 + t, rng.choice([0.99999, 0.9995, 0.5, 0.99995]) if t % 12 < 8 else 0.3) for t in range(40)]
    samples += [(140 + t, 0.2) for t in range(100)]
    episodes = EpisodeDetector("n1", close_threshold=0.999, min_gap_s=15)
    alerts = _feed(episodes, samples) + episodes.flush()
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["start_ts_ms"] >= 100_000 and alert["end_ts_ms"] < 140_000
    assert alert["start_ts_ms"] <= alert["peak_ts_ms"] <= alert["end_ts_ms"]
    assert alert["peak_score"] == 0.99999
    assert alert["samples"] > 1


def test_episodes_apart_by_more_than_the_gap_are_separate_alerts_with_deterministic_ids():
    samples = [(t, 0.99999 if t in (50, 51, 120) else 0.1) for t in range(200)]
    first = _feed(EpisodeDetector("n1", min_gap_s=30), samples)
    again = _feed(EpisodeDetector("n1", min_gap_s=30), samples)
    assert [a["alert_id"] for a in first] == ["n1:anomaly:50000", "n1:anomaly:120000"]
    assert first == again
    assert [a["samples"] for a in first] == [2, 1]


def test_an_alert_waits_for_the_gap_and_flush_closes_the_open_episode():
    episodes = EpisodeDetector("n1", min_gap_s=30)
    assert _feed(episodes, [(0, 0.99999), (10, 0.1), (29, 0.1)]) == []    # still within the gap
    assert episodes.open is not None
    [alert] = episodes.flush()
    assert alert["end_ts_ms"] == 0 and episodes.open is None and episodes.flush() == []


def test_alerts_match_the_avro_schema():
    episodes = EpisodeDetector("node-7", min_gap_s=5)
    alerts = _feed(episodes, [(0, 0.99999), (1, 0.999995), (20, 0.1)])
    assert len(alerts) == 1
    assert fastavro.validation.validate(alerts[0], fastavro.parse_schema(load_schema("Alert")))
    assert alerts[0]["contributing_features"] == ["temp"]
    assert alerts[0]["kind"] == "anomaly" and "node-7" in alerts[0]["message"]


@pytest.mark.parametrize("kind", ["spike", "level_shift", "stuck"])
def test_one_injected_anomaly_gives_one_alert_through_the_flow_models(kind):
    base = normal_telemetry(n=2400, seed=21)
    stream = inject(base, kind, at_s=1500)
    start, end = stream.windows[0]
    models = TelemetryModels.for_node("node-0")
    alerts = []
    for record in stream.records:
        alerts += models.update(record)[1]
    alerts += models.flush()
    overlapping = [a for a in alerts if a["start_ts_ms"] <= end and a["end_ts_ms"] >= start]
    assert len(overlapping) == 1, [(a["start_ts_ms"] - start, a["end_ts_ms"] - start) for a in overlapping]


def test_replay_alarm_spans_come_from_the_same_episodes():
    stream = inject(normal_telemetry(n=1500, seed=22), "spike", at_s=1000)
    times, flags, alarms = replay_telemetry(stream.records)
    start, end = (w / 1000.0 for w in stream.windows[0])
    assert any(a0 <= end and a1 >= start for a0, a1 in alarms)
    assert len(times) == len(flags) == len(stream.records)
