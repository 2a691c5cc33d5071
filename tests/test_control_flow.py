"""The control flow end to end through a real Tansu broker."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from deploy.produce import produce_telemetry
from deploy.replay import read_topic
from morph.policy import MorphPolicy, NodeState, PolicyConfig
from edge.thermal import Scenario
from schemas import TopicNames
from schemas.codec import Codec
from tests.conftest import run_liquid, start_liquid

pytestmark = pytest.mark.broker
TOPICS = TopicNames()
START_MS = 1_700_000_000_000


def commands_of(kafka, topic=TOPICS.commands):
    return [r for r in read_topic(kafka, topic) if r.get("_schema") == "MorphCommand"]


def essence(cmd):
    """A command without its wall-clock stamp and Kafka position (what a replay must reproduce)."""
    return {k: v for k, v in cmd.items() if not k.startswith("_") and k != "issued_ts_ms"}


def open_loop_telemetry(kafka, nodes, scenario="thermal-event", duration=150, start_ms=START_MS, seed=3):
    return produce_telemetry(kafka, TOPICS, nodes, Scenario(scenario, duration_s=duration), speed=0,
                             follow_commands=False, start_ms=start_ms, seed=seed)


def reference_commands(records):
    """What the plain policy decides on the same records, node by node."""
    policy, states, out = MorphPolicy(PolicyConfig()), {}, []
    for r in records:
        state = states.setdefault(r["node_id"], NodeState.new(r["node_id"]))
        cmd = policy.decide(state, r)
        if cmd:
            out.append(cmd)
    return out


def by_id(cmds):
    return {c["command_id"]: essence(c) for c in cmds}


def test_thermal_event_closed_loop_walks_the_ladder_with_acks(kafka, tmp_path):
    flow = start_liquid("flow", "run", "control", "--bootstrap", kafka.bootstrap, log=tmp_path / "flow.log")
    try:
        time.sleep(2.0)  # let the flow assign its partitions
        # At 10x a telemetry second is 100 ms of wall time, several times the flow's round trip on a
        # loaded 2-core machine; at 25x (40 ms) a command arrived samples late and the node skipped rungs.
        result = produce_telemetry(kafka, TOPICS, ["edge-1"], Scenario("thermal-event", duration_s=150),
                                   duration_s=190, speed=10)
        time.sleep(1.0)
    finally:
        flow.terminate()
        flow.wait(10)
    cmds = commands_of(kafka)
    seq = ["transformer"]
    for c in cmds:
        if c["to_variant"] != seq[-1]:
            seq.append(c["to_variant"])
    assert seq[:4] == ["transformer", "lstm", "cnn", "snn"], seq
    assert seq[-1] == "transformer" and result["final"]["edge-1"] == "transformer"
    critical = [c for c in cmds if c["trigger"] == "CRITICAL"]
    assert critical and critical[0]["from_variant"] == "cnn" and critical[0]["evidence"]["temperature_c"] >= 90
    acks = [r for r in read_topic(kafka, TOPICS.acks) if r.get("_schema") == "CommandAck"]
    assert {a["command_id"] for a in acks} == {c["command_id"] for c in cmds}
    assert all(a["status"] == "APPLIED" for a in acks)
    assert all(c["reason"] and c["evidence"]["window_size"] == 6 for c in cmds)


def test_bad_bytes_go_to_dead_letters_and_good_records_are_all_processed(kafka, tmp_path):
    codec = Codec()
    open_loop_telemetry(kafka, ["edge-1", "edge-2"])
    good = [r for r in read_topic(kafka, TOPICS.telemetry)]
    bad = {b"not avro at all": "unknown framing", b"\xc3\x01\x01": "truncated single-object header",
           b"\xc3\x01" + bytes(8) + b"\x00": "unknown schema fingerprint",
           codec.encode("Telemetry", {k: v for k, v in good[0].items() if not k.startswith("_")})[:-5]:
               "corrupt Telemetry body",
           codec.encode("Alert", {"alert_id": "a", "node_id": "edge-1", "kind": "x", "start_ts_ms": 1,
                                  "peak_ts_ms": 1, "peak_score": 1.0, "samples": 1,
                                  "contributing_features": [], "message": ""}): "wrong schema"}
    producer = Producer(kafka.producer())
    for raw in bad:
        producer.produce(TOPICS.telemetry, key=b"edge-1", value=raw)
    producer.flush()
    # ... and a second stretch of good records after the garbage, which must be processed too.
    open_loop_telemetry(kafka, ["edge-1", "edge-2"], start_ms=START_MS + 10_000_000)

    run_liquid("flow", "run", "control", "--until-end", "--bootstrap", kafka.bootstrap)
    dead = _raw_messages(kafka, TOPICS.deadletter)
    assert len(dead) == len(bad)
    reasons = sorted(dict(m.headers())["liquid.error"].decode() for m in dead)
    for expected in bad.values():
        assert any(r.startswith(expected) for r in reasons), (expected, reasons)
    assert {m.value() for m in dead} == set(bad)
    assert all(dict(m.headers())["liquid.source.topic"] == TOPICS.telemetry.encode() for m in dead)

    records = [{k: v for k, v in r.items() if not k.startswith("_")}
               for r in read_topic(kafka, TOPICS.telemetry) if r.get("_schema") == "Telemetry"]
    records.sort(key=lambda r: (r["node_id"], r["ts_ms"]))
    expected = reference_commands(records)
    assert len(expected) > 10
    assert by_id(commands_of(kafka)) == by_id(expected)


def _raw_messages(kafka, topic):
    consumer = Consumer(kafka.consumer("t"))
    meta = consumer.list_topics(topic, timeout=5).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out, idle = [], 0
    while idle < 3:
        msgs = consumer.consume(100, timeout=0.5)
        idle = 0 if msgs else idle + 1
        out += [m for m in msgs if m.error() is None]
    consumer.close()
    return out


def test_killed_flow_resumes_from_recovery_with_the_same_commands(kafka, tmp_path):
    recovery = tmp_path / "recovery"
    open_loop_telemetry(kafka, ["edge-1", "edge-2"], duration=80, start_ms=START_MS)
    flow = start_liquid("flow", "run", "control", "--recovery-dir", recovery, "--snapshot-interval", "0.2",
                        "--bootstrap", kafka.bootstrap, log=tmp_path / "run1.log")
    deadline = time.time() + 60
    while time.time() < deadline and not commands_of(kafka):
        time.sleep(0.5)
    time.sleep(1.5)  # a few snapshots after the first half is processed
    flow.kill()  # SIGKILL: no clean shutdown
    flow.wait(10)
    first = commands_of(kafka)
    assert first, (tmp_path / "run1.log").read_text()[-2000:]

    # The second half of the scenario arrives while the flow is down.
    fleet_second = produce_telemetry(kafka, TOPICS, ["edge-1", "edge-2"], Scenario("thermal-event", duration_s=150),
                                     speed=0, follow_commands=False, start_ms=START_MS + 80_000, seed=4,
                                     duration_s=80)
    assert fleet_second["samples"] == 160
    run_liquid("flow", "run", "control", "--recovery-dir", recovery, "--snapshot-interval", "0.2",
               "--until-end", "--bootstrap", kafka.bootstrap)
    resumed = commands_of(kafka)

    records = [{k: v for k, v in r.items() if not k.startswith("_")} for r in read_topic(kafka, TOPICS.telemetry)]
    records.sort(key=lambda r: (r["node_id"], r["ts_ms"]))
    expected = by_id(reference_commands(records))
    # At-least-once: commands since the last snapshot may be written twice, with the same id and content.
    assert by_id(resumed) == expected
    assert len(expected) > len(by_id(first))


def test_replay_from_a_time_reproduces_the_commands(kafka, tmp_path):
    # Older traffic of other nodes sits before the run we replay.
    open_loop_telemetry(kafka, ["old-1"], duration=40, start_ms=START_MS - 10_000_000)
    time.sleep(0.05)
    cut = int(time.time() * 1000)
    open_loop_telemetry(kafka, ["edge-1", "edge-2"])
    run_liquid("flow", "run", "control", "--until-end", "--bootstrap", kafka.bootstrap)
    live = [c for c in commands_of(kafka) if c["node_id"] != "old-1"]
    assert live

    proc = run_liquid("replay", "--topic", TOPICS.telemetry, "--from-time", cut, "--flow", "control",
                      "--bootstrap", kafka.bootstrap)
    assert "edge.commands.replay" in proc.stderr
    replayed = commands_of(kafka, TOPICS.commands + ".replay")
    assert by_id(replayed) == by_id(live)
    assert not [c for c in replayed if c["node_id"] == "old-1"]
    # The live topic was not touched by the replay.
    assert len(commands_of(kafka)) == len(live) + len([c for c in commands_of(kafka) if c["node_id"] == "old-1"])

    dump = run_liquid("replay", "--topic", TOPICS.commands, "--from-offset", "0", "--dump", "--max", "3",
                      "--bootstrap", kafka.bootstrap)
    lines = [json.loads(x) for x in dump.stdout.splitlines()]
    assert len(lines) == 3 and all(x["_schema"] == "MorphCommand" for x in lines)


@pytest.mark.parametrize("args,message", [
    (["topics", "list", "--bootstrap", "127.0.0.1:1"], "no Kafka broker answers at 127.0.0.1:1"),
    (["flow", "run", "control", "--kafka-config", "/nonexistent.properties"], "cannot read Kafka config file"),
    (["produce", "telemetry", "-X", "no-equals-sign"], "expected key=value"),
    (["flow", "run", "nosuchflow"], "unknown flow 'nosuchflow'"),
    (["replay", "--topic", "t", "--dump", "--from-time", "yesterday"], "expected epoch ms or an ISO 8601 time"),
    (["produce", "telemetry", "--scenario", "volcano"], "invalid choice: 'volcano'"),
    (["topics", "list", "-X", "no.such.property=1"], "bad Kafka setting"),
])
def test_bad_input_is_one_line_error(args, message):
    proc = run_liquid(*args, check=False, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_unknown_topic_and_out_of_range_offset(kafka):
    proc = run_liquid("replay", "--topic", "no.such.topic", "--dump", "--bootstrap", kafka.bootstrap, check=False)
    assert proc.returncode == 2 and "unknown topic(s) no.such.topic" in proc.stderr
    assert "liquid topics create" in proc.stderr
    proc = run_liquid("replay", "--topic", TOPICS.telemetry, "--from-offset", "0:500", "--dump",
                      "--bootstrap", kafka.bootstrap, check=False)
    assert proc.returncode == 2 and "offset 500 is out of range" in proc.stderr
