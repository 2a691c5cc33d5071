"""Schema registration and Confluent framing through confluent-kafka's SchemaRegistryClient over HTTP."""

import json

import pytest

from deploy.cli import main
from schemas import SCHEMA_NAMES, TopicNames
from schemas.codec import Codec
from schemas.registry import RegistrySchemaIds, register_all
from tests.registry_server import Registry, serve


@pytest.fixture
def registry():
    reg = Registry()
    server, url = serve(reg)
    yield reg, url
    server.shutdown()


def test_register_all_then_unchanged(registry, capsys):
    reg, url = registry
    assert main(["schemas", "register", "--registry-url", url]) == 0
    out = capsys.readouterr().out
    assert out.count("registered (id") == len(SCHEMA_NAMES)
    assert set(reg.subjects) == {f"{TopicNames().for_schema(n)}-value" for n in SCHEMA_NAMES}
    # Second run: everything is already there.
    assert {r.outcome for r in register_all(url)} == {"unchanged"}


def test_incompatible_change_is_refused(registry, capsys):
    reg, url = registry
    register_all(url)
    subject = "edge.telemetry-value"
    before = list(reg.subjects[subject])
    import schemas

    original = schemas.schema_json

    def changed(name):
        s = original(name)
        if name == "Telemetry":
            s = json.loads(json.dumps(s))
            s["fields"].append({"name": "rack", "type": "string", "doc": "new field without default"})
        return s

    schemas.schema_json = changed
    try:
        import schemas.registry as r

        r.schema_json = changed
        assert main(["schemas", "register", "--registry-url", url]) == 1
    finally:
        schemas.schema_json = original
        r.schema_json = original
    assert "incompatible" in capsys.readouterr().out
    assert reg.subjects[subject] == before


def test_confluent_framing_with_registry_ids(registry):
    _, url = registry
    register_all(url)
    codec = Codec(RegistrySchemaIds(url))
    record = {"alert_id": "a", "node_id": "n", "kind": "anomaly", "start_ts_ms": 1, "peak_ts_ms": 2,
              "end_ts_ms": 3, "peak_score": 0.9, "samples": 2, "contributing_features": ["x"], "message": "m"}
    raw = codec.encode("Alert", record)
    assert raw[0] == 0
    # A fresh codec resolves the writer schema by id from the registry.
    assert Codec(RegistrySchemaIds(url)).decode(raw).record == record


def test_unreachable_registry_is_one_line_error(capsys):
    assert main(["schemas", "register", "--registry-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schema registry at http://127.0.0.1:9 failed" in err[0]


@pytest.mark.broker
def test_producers_write_the_confluent_framing_when_a_registry_is_configured(registry, kafka, tmp_path):
    """liquid produce telemetry / signals with --registry-url: magic byte 0 and the registry's id; dumps read them back."""
    from confluent_kafka import Consumer, TopicPartition

    from tests.conftest import run_liquid

    _, url = registry
    register_all(url)
    topics = TopicNames()
    run_liquid("produce", "telemetry", "--nodes", "2", "--open-loop", "--speed", "0", "--duration", "5", "--quiet",
               "--registry-url", url, "--bootstrap", kafka.bootstrap)
    log = tmp_path / "log.csv"
    log.write_text("case,act,time\nc1,a,2024-01-01T00:00:00Z\nc1,b,2024-01-01T00:01:00Z\n")
    run_liquid("produce", "signals", "--log", log, "--case-col", "case", "--activity-col", "act", "--time-col",
               "time", "--registry-url", url, "--bootstrap", kafka.bootstrap)
    ids = RegistrySchemaIds(url)
    for topic, schema in ((topics.telemetry, "Telemetry"), (topics.signals, "WorkflowSignal")):
        consumer = Consumer(kafka.consumer("framing-check", **{"auto.offset.reset": "earliest"}))
        consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
        raw = [m.value() for m in consumer.consume(100, timeout=5) if m.error() is None]
        consumer.close()
        assert raw and all(r[0] == 0 and int.from_bytes(r[1:5], "big") == ids.id_for(schema) for r in raw)
    dumped = run_liquid("replay", "--topic", topics.signals, "--dump", "--registry-url", url,
                        "--bootstrap", kafka.bootstrap).stdout.splitlines()
    assert [json.loads(line)["task"] for line in dumped] == ["a", "a", "b", "b"]
