"""The control flow with its online models on (--models), through the real broker."""

from __future__ import annotations

import random

import pytest
from confluent_kafka import Producer

from deploy.replay import read_topic
from schemas import TopicNames
from schemas.codec import Codec
from tests.conftest import run_liquid

pytestmark = pytest.mark.broker
TOPICS = TopicNames()


def telemetry(node, t, latency, rng):
    return dict(node_id=node, ts_ms=1_700_000_000_000 + t * 1000, seq=t, gpu_temp_c=round(70 + rng.gauss(0, 0.3), 2),
                gpu_util=0.9, mem_used_frac=0.5, power_w=250.0, power_cap_w=350.0,
                latency_ms=latency * (1 + 0.05 * rng.gauss(0, 1)), throughput_rps=100.0, variant="transformer",
                precision="fp32", batch_size=16, source="thermal-model", scenario=None)


def test_latency_episode_is_one_alert_and_a_fallback_command(kafka):
    codec, producer, rng = Codec(), Producer(kafka.producer()), random.Random(5)
    for t in range(500):
        degraded = 300 <= t < 340
        for node in ("edge-1", "edge-2"):
            latency = 30.0 if degraded and node == "edge-1" else 1.0
            producer.produce(TOPICS.telemetry, key=node.encode(),
                             value=codec.encode("Telemetry", telemetry(node, t, latency, rng)))
    producer.flush()
    run_liquid("flow", "run", "control", "--models", "--until-end", "--bootstrap", kafka.bootstrap)

    alerts = [a for a in read_topic(kafka, TOPICS.alerts) if a.get("_schema") == "Alert"]
    episode = [a for a in alerts if a["node_id"] == "edge-1" and "latency_ms" in a["contributing_features"]]
    assert len(episode) == 1, alerts
    a = episode[0]
    start = 1_700_000_000_000 + 300_000
    assert start <= a["start_ts_ms"] <= start + 3_000 and a["end_ts_ms"] > a["start_ts_ms"]
    assert a["peak_score"] > 0.999 and a["samples"] >= 3
    assert not [x for x in alerts if x["node_id"] == "edge-2"], "the healthy node raises no alert"

    cmds = [c for c in read_topic(kafka, TOPICS.commands) if c.get("_schema") == "MorphCommand"]
    fallback = [c for c in cmds if c["trigger"] == "ANOMALY"]
    assert len(fallback) == 1 and fallback[0]["node_id"] == "edge-1" and fallback[0]["fallback"]
    ev = fallback[0]["evidence"]
    assert "latency_ms" in ev["contributing_features"] and ev["anomaly_score"] > 0.999
    assert ev["forecast_c"] is not None and ev["forecast_horizon_s"] == 15.0
    assert not [c for c in cmds if c["node_id"] == "edge-2"]
