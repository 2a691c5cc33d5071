"""The control flow with its online models on (--models): alerts on open, on close, on idle and at the end."""

from __future__ import annotations

import pickle
import random
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import Producer

from deploy.replay import read_topic
from morph.policy import MorphPolicy
from operators.control import ControlLogic, ControlState, MorphStep
from operators.events import Event
from prediction.telemetry_models import TelemetryModels
from schemas import TopicNames
from schemas.codec import Codec
from schemas.state import PickledState, StateVersionError
from tests.conftest import run_liquid

TOPICS = TopicNames()


def telemetry(node, t, latency, rng):
    return dict(node_id=node, ts_ms=1_700_000_000_000 + t * 1000, seq=t, gpu_temp_c=round(70 + rng.gauss(0, 0.3), 2),
                gpu_util=0.9, mem_used_frac=0.5, power_w=250.0, power_cap_w=350.0,
                latency_ms=latency * (1 + 0.05 * rng.gauss(0, 1)), throughput_rps=100.0, variant="transformer",
                precision="fp32", batch_size=16, source="thermal-model", scenario=None)


@pytest.mark.broker
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
    assert len(episode) == 2, alerts                       # opened, then closed: one episode
    opened, a = sorted(episode, key=lambda x: x["end_ts_ms"] is not None)
    assert opened["alert_id"] == a["alert_id"] and opened["end_ts_ms"] is None
    start = 1_700_000_000_000 + 300_000
    assert start <= opened["start_ts_ms"] <= start + 3_000
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


@pytest.mark.broker
def test_an_episode_open_when_the_input_ends_is_flushed(kafka):
    codec, producer, rng = Codec(), Producer(kafka.producer()), random.Random(6)
    for t in range(320):                                   # latency degrades at 300 s and the input ends
        latency = 30.0 if t >= 300 else 1.0
        producer.produce(TOPICS.telemetry, key=b"edge-1",
                         value=codec.encode("Telemetry", telemetry("edge-1", t, latency, rng)))
    producer.flush()
    run_liquid("flow", "run", "control", "--models", "--until-end", "--bootstrap", kafka.bootstrap)
    alerts = [a for a in read_topic(kafka, TOPICS.alerts) if a.get("_schema") == "Alert"]
    closed = [a for a in alerts if a["end_ts_ms"] is not None]
    assert [a["alert_id"] for a in closed] == [a["alert_id"] for a in alerts if a["end_ts_ms"] is None]
    assert closed and closed[0]["start_ts_ms"] >= 1_700_000_000_000 + 300_000


class _Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


def _step(clock):
    return MorphStep(MorphPolicy(), lambda node: TelemetryModels.for_node(node), stamp_wall_clock=False,
                     idle_flush_s=30.0, clock=clock)


def _alerts(outputs):
    return [record for schema, record in outputs if schema == "Alert"]


def _drive(logic, latencies, rng, start=0):
    out = []
    for t, latency in enumerate(latencies, start):
        emitted, _ = logic.on_item(Event("Telemetry", telemetry("edge-1", t, latency, rng), TOPICS.telemetry, 0, t))
        out += _alerts(emitted)
    return out


def test_the_alert_opens_on_the_anomalous_sample_and_an_idle_node_is_flushed():
    clock, rng = _Clock(), random.Random(7)
    logic = _step(clock).build(None)
    assert _drive(logic, [1.0] * 300, rng) == [] and logic.notify_at() is None
    [opened] = _drive(logic, [30.0], rng, start=300)      # the first degraded sample opens it
    assert opened["end_ts_ms"] is None and opened["start_ts_ms"] == 1_700_000_000_000 + 300_000
    assert "latency_ms" in opened["contributing_features"]
    assert logic.notify_at() == clock.now + timedelta(seconds=30)
    clock.now += timedelta(seconds=31)                     # the node goes silent
    [closed] = _alerts(logic.on_notify()[0])
    assert closed["alert_id"] == opened["alert_id"] and closed["end_ts_ms"] == opened["start_ts_ms"]
    assert logic.notify_at() is None and _alerts(logic.on_eof()[0]) == []


def test_end_of_input_flushes_and_snapshots_restore_with_their_version_checked():
    clock, rng = _Clock(), random.Random(8)
    step = _step(clock)
    logic = step.build(None)
    _drive(logic, [1.0] * 300 + [30.0] * 3, rng)
    resumed = step.build(logic.snapshot())                 # what Bytewax does on resume
    [closed] = _alerts(resumed.on_eof()[0])
    assert closed["samples"] >= 1 and closed["end_ts_ms"] is not None
    assert step.build(None).on_eof() == ([], ControlLogic.RETAIN)   # nothing to flush for a fresh node
    newer = pickle.loads(logic.snapshot())
    newer.version = ControlState.STATE_VERSION + 1
    with pytest.raises(StateVersionError):   # checked as the snapshot is unpickled
        step.build(PickledState.of(newer))
    # a recovery store written by an earlier release holds the state itself, not its pickle
    older = step.build(pickle.loads(logic.snapshot()))
    [closed_again] = _alerts(older.on_eof()[0])
    assert closed_again == closed


def test_without_a_recovery_store_a_node_hands_bytewax_no_snapshot_to_copy():
    clock, rng = _Clock(), random.Random(9)
    step = MorphStep(MorphPolicy(), lambda node: TelemetryModels.for_node(node), stamp_wall_clock=False,
                     clock=clock, snapshots=False)
    logic = step.build(None)
    _drive(logic, [1.0] * 50, rng)
    assert logic.snapshot() is None and logic.state is not None   # the live state is kept, nothing copied
    kept = _step(clock).build(None)
    _drive(kept, [1.0] * 50, random.Random(9))
    snap = kept.snapshot()
    assert isinstance(snap, PickledState) and isinstance(snap.load(), ControlState)


def test_the_flow_publishes_the_opening_alert_and_flushes_it_when_its_input_ends():
    from bytewax.testing import TestingSink, TestingSource, run_main

    from flows.control import build
    from flows.spec import FlowSpec

    rng = random.Random(9)
    samples = [("Telemetry", telemetry("edge-1", t, 30.0 if t >= 300 else 1.0, rng)) for t in range(310)]
    out = []
    spec = FlowSpec("control", bootstrap="unused:9092", deterministic=True, models=True)
    run_main(build(spec, source=TestingSource(samples), sink=TestingSink(out)))
    alerts = [record for node, (schema, record) in out if schema == "Alert"]
    assert [a["end_ts_ms"] is None for a in alerts] == [True, False]   # opened, then flushed at the end
    opened, closed = alerts
    assert opened["alert_id"] == closed["alert_id"] and opened["start_ts_ms"] == 1_700_000_000_000 + 300_000
    assert closed["end_ts_ms"] >= closed["start_ts_ms"] and closed["samples"] >= 1


def test_peers_experience_has_an_input_of_its_own_and_the_telemetry_input_refuses_it():
    """The testing wiring is the Kafka wiring: experience from its own input (``liquid.experience`` there), so
    no telemetry sample passes a test for it; an Experience on the telemetry input is an error that says so."""
    from bytewax.testing import TestingSink, TestingSource, run_main

    from flows.control import build
    from flows.spec import FlowSpec

    spec = FlowSpec("control", bootstrap="unused:9092", deterministic=True, options={"policy_kind": "rli"})
    steps = lambda flow: [s.step_id.split(".", 1)[1] for s in flow.substeps]  # noqa: E731
    with_peers = build(spec, source=TestingSource([]), sink=TestingSink([]), peers=TestingSource([]))
    assert steps(with_peers)[:7] == ["in", "in_keyed", "peers", "peers_keyed", "peer_groups", "to_member", "with_peers"]
    assert "peer_groups" not in steps(build(spec, source=TestingSource([]), sink=TestingSink([])))
    experience = {"experience_id": "peer-9-1", "origin_node": "peer-9", "group": "g0"}
    with pytest.raises(Exception) as raised:
        run_main(build(spec, source=TestingSource([("Experience", experience)]), sink=TestingSink([])))
    chain, error = [], raised.value
    while error is not None:   # Bytewax wraps the mapper's error in its own
        chain.append(str(error))
        error = error.__cause__
    refused = "a Experience record is not an input of this flow (expected Telemetry, CommandAck)"
    assert any(refused in message for message in chain), chain
