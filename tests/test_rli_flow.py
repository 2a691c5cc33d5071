"""The control flow with --policy rli through a real Tansu broker: propensities, experience, recovery."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from deploy.produce import produce_telemetry
from deploy.replay import read_topic
from edge.thermal import Scenario
from morph.agent import RliAgent, RliConfig
from morph.arms import ArmSet
from schemas import TopicNames
from schemas.codec import Codec
from tests.conftest import run_liquid, start_liquid

pytestmark = pytest.mark.broker
TOPICS = TopicNames()
START_MS = 1_700_000_000_000


@pytest.fixture(autouse=True)
def nominal_arms(monkeypatch, tmp_path):
    """The flow and the reference agent build the same arms: the nominal ones (no zoo here)."""
    monkeypatch.setenv("LIQUID_ZOO_DIR", str(tmp_path / "no-zoo"))


def records_of(kafka, topic, schema):
    return [{k: v for k, v in r.items() if not k.startswith("_")}
            for r in read_topic(kafka, topic) if r.get("_schema") == schema]


def essence(cmd):
    return {k: v for k, v in cmd.items() if k != "issued_ts_ms"}


def telemetry(kafka, nodes, duration, start_ms, seed):
    return produce_telemetry(kafka, TOPICS, nodes, Scenario("thermal-event", duration_s=150), speed=0,
                             follow_commands=False, start_ms=start_ms, seed=seed, duration_s=duration)


def reference_commands(records):
    """What the plain agent decides on the same records, node by node (no peers: order-independent)."""
    agent, states, out = RliAgent(ArmSet.nominal(), RliConfig(seed=0)), {}, []
    for r in sorted(records, key=lambda r: (r["node_id"], r["ts_ms"])):
        state = states.setdefault(r["node_id"], agent.new_state(r["node_id"]))
        d = agent.decide(state, r)
        if d is not None and d.command is not None:
            out.append(d.command)
    return {c["command_id"]: essence(c) for c in out}


def test_commands_carry_propensities_and_experience_round_trips_through_the_topic(kafka, tmp_path):
    codec = Codec()
    # A peer elsewhere in group g0 has shared before this flow starts: the flow must read it without complaint.
    peer = {"experience_id": "peer-9-1", "origin_node": "peer-9", "group": "g0", "ts_ms": START_MS,
            "temp_level": 1, "load_level": 1, "power_capped": 0, "congested": 0, "arm": "cnn/fp32/b8",
            "reward": 0.7, "count": 1, "noise_scale": 0.0, "epsilon": None, "ttl": 3, "hops": 0}
    producer = Producer(kafka.producer())
    producer.produce(TOPICS.experience, key=b"g0", value=codec.encode("Experience", peer))
    producer.flush(10)
    telemetry(kafka, ["edge-1", "edge-2"], duration=120, start_ms=START_MS, seed=3)
    run_liquid("flow", "run", "control", "--policy", "rli", "--no-dp", "--until-end", "--bootstrap", kafka.bootstrap)

    commands = records_of(kafka, TOPICS.commands, "MorphCommand")
    assert commands and all(c["trigger"] in ("LEARNED", "CRITICAL") for c in commands)
    assert all(c["propensity"] is not None and 0.0 < c["propensity"] <= 1.0 and c["arm"] for c in commands)
    shared = records_of(kafka, TOPICS.experience, "Experience")
    mine = [e for e in shared if e["origin_node"] in ("edge-1", "edge-2")]
    assert peer in shared and len(mine) >= 2 * 10
    assert all(e["group"] == "g0" and e["noise_scale"] == 0.0 and e["epsilon"] is None for e in mine)
    assert not records_of(kafka, TOPICS.deadletter, "Experience")
    assert experience_keys(kafka) == {b"g0"}   # keyed by group on the topic, as the flow reads it back


def experience_keys(kafka) -> set:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(kafka.consumer("experience-keys"))
    partitions = consumer.list_topics(TOPICS.experience, timeout=10).topics[TOPICS.experience].partitions
    consumer.assign([TopicPartition(TOPICS.experience, p, 0) for p in partitions])
    keys, idle = set(), 0
    while idle < 4:   # until 2 s pass without a message: everything was read above already
        batch = [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
        keys |= {m.key() for m in batch}
        idle = 0 if batch else idle + 1
    consumer.close()
    return keys


def test_experience_under_dp_is_noised_and_says_so(kafka, tmp_path):
    telemetry(kafka, ["edge-1"], duration=150, start_ms=START_MS, seed=5)
    run_liquid("flow", "run", "control", "--policy", "rli", "--dp-epsilon", "2", "--until-end",
               "--bootstrap", kafka.bootstrap)
    shared = records_of(kafka, TOPICS.experience, "Experience")
    # clipped to the agent's reward range, whose width (the sensitivity) is the SLO penalty, 0.5
    assert shared and all(e["epsilon"] == 2.0 and e["noise_scale"] == pytest.approx(0.5 / e["count"] / 2.0)
                          for e in shared)


def test_killed_rli_flow_resumes_its_agent_from_recovery(kafka, tmp_path):
    recovery = tmp_path / "recovery"
    telemetry(kafka, ["edge-1", "edge-2"], duration=80, start_ms=START_MS, seed=3)
    flow = start_liquid("flow", "run", "control", "--policy", "rli", "--no-peers", "--recovery-dir", recovery,
                        "--snapshot-interval", "0.2", "--bootstrap", kafka.bootstrap, log=tmp_path / "run1.log")
    deadline = time.time() + 60
    while time.time() < deadline and not records_of(kafka, TOPICS.commands, "MorphCommand"):
        time.sleep(0.5)
    time.sleep(1.5)  # a few snapshots after the first half is processed
    flow.kill()  # SIGKILL: no clean shutdown
    flow.wait(10)
    first = records_of(kafka, TOPICS.commands, "MorphCommand")
    assert first, (tmp_path / "run1.log").read_text()[-2000:]

    telemetry(kafka, ["edge-1", "edge-2"], duration=80, start_ms=START_MS + 80_000, seed=4)
    run_liquid("flow", "run", "control", "--policy", "rli", "--no-peers", "--recovery-dir", recovery,
               "--snapshot-interval", "0.2", "--until-end", "--bootstrap", kafka.bootstrap)
    resumed = {c["command_id"]: essence(c) for c in records_of(kafka, TOPICS.commands, "MorphCommand")}
    expected = reference_commands(records_of(kafka, TOPICS.telemetry, "Telemetry"))
    # The agent's statistics, exploration RNG and pending decision came back from the snapshot: the
    # resumed run decides exactly as one uninterrupted agent (at-least-once: repeats share id and content).
    assert resumed == expected
    assert len(expected) > len({c["command_id"] for c in first})
