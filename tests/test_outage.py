"""A broker outage, for real: the embedded broker's process is stopped mid-scenario, the worker is
restarted inside the outage, and a new broker comes up on the same port.

Tansu runs on memory storage, so the restarted broker has none of the old
records (nor topics: the test recreates them, as an operator would). "Nothing
lost" is therefore counted end to end: every record id the node wrote to its
outbox must be read by a consumer — from the first broker before it died, or
from the second after the outbox drained into it. The only records a consumer
cannot see are ones the first broker acknowledged in the instant before it was
killed and took with it (a broker with disk storage keeps them); they are
identified from the outbox's delivery reports, counted, and must be at most a
few.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from deploy.broker import EmbeddedBroker
from deploy.replay import read_topic
from deploy.topics import ensure_topics
from edge.thermal import Scenario
from edge.worker import EdgeWorker
from morph.policy import MorphPolicy, PolicyConfig
from operators.control import MorphStep
from operators.events import Event
from schemas import TopicNames
from schemas.kafka import KafkaSettings
from tests.support import TopicCollector, record_id

pytestmark = pytest.mark.broker
TOPICS = TopicNames()
WATCHED = (TOPICS.telemetry, TOPICS.acks, TOPICS.signals, TOPICS.executions)
#: Scenario seconds per wall second. The thermal model advances one scenario second per telemetry
#: sample, so a swap the local policy calls for shows in the temperature only once it serves, a
#: sample or more later. At 10x a sample is 100 ms and a loaded 2-core host that takes a sample
#: longer to swap adds its ~3.4 °C to the peak; at 5x the peak measures the policy, not the host.
SPEED = 5.0


def wall(scenario_s: float) -> float:
    """Wall seconds for ``scenario_s`` seconds of the scenario."""
    return scenario_s / SPEED


def make_worker(settings, zoo, tmp_path, written: list, delivered: dict) -> EdgeWorker:
    worker = EdgeWorker(settings, TOPICS, ["edge-1"], Scenario("fan-failure", duration_s=100.0), zoo_dir=zoo.root,
                        sensor="thermal", rate=50, interval_s=1.0 / SPEED, time_scale=SPEED,
                        outbox_path=tmp_path / "outbox.db", local_policy=PolicyConfig().scaled(SPEED),
                        silent_after_s=wall(5.0), workflow="inspection", workflow_gap_s=0.3,
                        outbox_options={"stall_s": 2.0})
    put, on_delivered = worker.outbox.put, worker.outbox.on_delivered

    def recording_put(topic, key, value, priority, rid, wait=False):
        written.append(rid)
        return put(topic, key, value, priority, rid, wait)

    def recording_delivered(rid):
        delivered.setdefault(rid, time.monotonic())
        on_delivered(rid)

    worker.outbox.put, worker.outbox.on_delivered = recording_put, recording_delivered
    return worker


def test_outage_with_a_worker_restart_loses_nothing_and_the_flows_count_nothing_twice(zoo, tmp_path):
    written, delivered = [], {}
    broker = EmbeddedBroker().start()
    second = None
    try:
        settings = KafkaSettings(broker.bootstrap)
        ensure_topics(settings, TOPICS.all(), partitions=2)
        collector = TopicCollector(settings, WATCHED, "outage-collector")
        collector.start()
        first = make_worker(settings, zoo, tmp_path, written, delivered).start()
        time.sleep(wall(10.0))
        # Kill the broker once the collector has read everything it acknowledged so far, in a
        # quiet moment (no delivery for 50 ms): what it acknowledges after that dies with it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
                set(delivered) <= collector.ids() and time.monotonic() - max(delivered.values()) > 0.05):
            time.sleep(0.002)
        caught_up_at = time.monotonic()
        broker.stop()
        stopped_at = time.monotonic()
        collector.stop()
        time.sleep(wall(25.0))                  # the fan fails in here (scenario 15 s)
        first.stop(flush_timeout_s=0)           # the worker restarts inside the outage
        local_acks = [ack for _, ack in first.nodes["edge-1"].applied if ack.get("origin") == "local"]
        restarted = make_worker(settings, zoo, tmp_path, written, delivered).start(ready_timeout_s=0.2)
        time.sleep(wall(20.0))
        second = EmbeddedBroker(port=broker.port).start()   # the link comes back
        ensure_topics(settings, TOPICS.all(), partitions=2)
        deadline = time.monotonic() + 60
        while restarted.outbox.pending() > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        outage_s = time.monotonic() - stopped_at
        counters = restarted.outbox.counters()
        restarted.stop()
        after = [(r["_schema"], r) for t in WATCHED for r in read_topic(settings, t) if "_schema" in r]
    finally:
        broker.stop()
        if second is not None:
            second.stop()

    # The local policy stepped the node down while the control plane was unreachable.
    assert local_acks, "no local decision during the outage"
    assert all(a["status"] == "APPLIED" for a in local_acks)
    assert local_acks[0]["from_variant"] == "transformer" and local_acks[-1]["to_variant"] in ("mobilenet", "snn")
    # Nothing lost: every record the node wrote was read, but for what the dead broker took with it.
    read = [(schema, record) for schema, record, _ in collector.records] + after
    read_ids = {record_id(r) for _, r in read}
    lost = set(written) - read_ids
    taken_by_broker = {rid for rid in lost if caught_up_at <= delivered.get(rid, -1) <= stopped_at + 0.05}
    assert lost == taken_by_broker and len(lost) <= 3, (len(lost), sorted(lost)[:5])
    assert counters["downsampled"] == counters["refused"] == counters["expired"] == 0
    # Local acks reached the cluster once the link was back, with their origin.
    origins = Counter(r.get("origin") for s, r in read if s == "CommandAck")
    assert origins["local"] >= len(local_acks)
    kinds = Counter(s for s, _ in read)
    assert kinds["Telemetry"] > 40 and kinds["WorkflowSignal"] > 10 and kinds["ExecutionRecord"] > 5, kinds
    assert outage_s > wall(40.0)
    # Without the local policy the failing fan takes a transformer towards 130 °C (the thermal model).
    assert max(r["gpu_temp_c"] for s, r in read if s == "Telemetry") < 100.0

    # The flows count each record once, however often it was delivered.
    step = MorphStep(MorphPolicy(PolicyConfig().scaled(SPEED)))
    state = None
    for schema, record in read:
        if schema in ("Telemetry", "CommandAck"):
            state, _ = step(state, Event(schema, record, "t", 0, 0))
    control_ids = [record_id(r) for s, r in read if s in ("Telemetry", "CommandAck")]
    assert state.duplicates == len(control_ids) - len(set(control_ids))
    from fingerprint.temporal import Fingerprint

    fingerprint = Fingerprint("inspection")
    signals = [r for s, r in read if s == "WorkflowSignal"]
    for signal in signals:
        fingerprint.learn_one(signal)
    assert fingerprint.accepted == len({s["signal_id"] for s in signals})
    from fingerprint.store import CentralExecutions

    central = CentralExecutions(tmp_path / "central.db")
    executions = [r for s, r in read if s == "ExecutionRecord"]
    assert sum(central.apply(r) == "applied" for r in executions) == len({r["record_id"] for r in executions})
    # A restarted worker's runs are new runs (its boot is in the run id), not duplicates of old ones.
    assert len({s["run_id"].split("-run-")[0] for s in signals}) == 2


def test_a_restarted_worker_resumes_the_model_its_node_stepped_down_to(zoo, tmp_path):
    from tests.test_signing import morph_command

    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        ensure_topics(settings, TOPICS.all(), partitions=2)
        worker = EdgeWorker(settings, TOPICS, ["edge-1"], Scenario("steady"), zoo_dir=zoo.root, sensor="thermal",
                            rate=50, interval_s=0.2, outbox_path=tmp_path / "outbox.db").start()
        try:
            worker._on_command({**morph_command("edge-1", 1, "cnn", "fp16"), "batch_size": 4})
            deadline = time.monotonic() + 20
            while not worker.nodes["edge-1"].applied and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            worker.stop()
        again = EdgeWorker(settings, TOPICS, ["edge-1"], Scenario("steady"), zoo_dir=zoo.root, sensor="thermal",
                           rate=50, interval_s=0.2, outbox_path=tmp_path / "outbox.db")
        current = again.nodes["edge-1"].server.current
        assert (current.variant, current.precision, again.nodes["edge-1"].batch_size) == ("cnn", "fp16", 4)
        again.nodes["edge-1"].server.close()


def test_control_state_of_version_1_is_migrated_and_a_newer_one_refused():
    import pickle

    from morph.policy import NodeState
    from operators.control import ControlState
    from schemas.state import StateVersionError

    old = ControlState.__new__(ControlState)
    old.__setstate__({"node": NodeState.new("edge-1"), "models": None, "version": 1})  # a pre-outbox snapshot
    assert (old.version, old.duplicates, old.adopted_until_ms, dict(old.seen)) == (2, 0, 0, {})
    again = pickle.loads(pickle.dumps(old))
    assert again == old
    with pytest.raises(StateVersionError, match="ControlState snapshot has state version 3"):
        ControlState.__new__(ControlState).__setstate__({"node": NodeState.new("edge-1"), "version": 3})


def test_control_step_adopts_a_local_decision_instead_of_commanding_from_stale_samples():
    step = MorphStep(MorphPolicy(PolicyConfig(window=3, sustain_fraction=0.6, cooldown_s=0)), stamp_wall_clock=False)

    def sample(i, temp, variant="transformer"):
        return Event("Telemetry", {"node_id": "edge-1", "ts_ms": i * 1000, "seq": i, "gpu_temp_c": temp,
                                   "mem_used_frac": 0.4, "power_w": 200.0, "power_cap_w": 300.0, "variant": variant,
                                   "precision": "fp32", "batch_size": 16, "record_id": f"edge-1-b-{i}"}, "t", 0, i)

    local_ack = Event("CommandAck", {"command_id": "edge-1-local-b-1", "node_id": "edge-1", "kind": "MORPH",
                                     "status": "APPLIED", "reason": "ok", "ts_ms": 5_100, "from_variant": "transformer",
                                     "to_variant": "lstm", "to_precision": "fp32", "decided_on_ts_ms": 5_000,
                                     "origin": "local", "record_id": "edge-1-b-a1"}, "t", 0, 0)
    state, out = step(None, local_ack)                     # drained first: acks before telemetry
    for i in range(1, 6):                                  # the outage's hot samples, old by now
        state, out = step(state, sample(i, 87.0))
        assert not out, "commanded from a stretch the node had handled itself"
    state, out = step(state, sample(6, 87.0, "lstm"))      # after the node's own decision: the flow decides again
    assert [(name, c["to_variant"]) for name, c in out] == [("MorphCommand", "cnn")]
    state, out = step(state, sample(6, 87.0, "lstm"))      # the same record redelivered: counted once
    assert not out and state.duplicates == 1
