"""Codec round trips, framing detection and the errors that send a message to the dead-letter topic."""

import struct

import pytest

from schemas import SCHEMA_NAMES, TopicNames
from schemas.codec import Codec, DecodeError

TELEMETRY = {"node_id": "edge-1", "ts_ms": 1_700_000_000_000, "seq": 7, "gpu_temp_c": 71.5, "gpu_util": 0.9,
             "mem_used_frac": 0.5, "power_w": 240.0, "power_cap_w": 350.0, "latency_ms": 3.1,
             "throughput_rps": 410.0, "variant": "transformer", "precision": "fp32", "batch_size": 16,
             "source": "simulator", "scenario": None, "record_id": "edge-1-18c9f-7", "accuracy": 0.97,
             "preprocessing": "none", "offered_rps": 420.0, "queue_len": 3, "capacity_rps": 500.0,
             "energy_j_per_inference": 0.585, "confidence": 0.91}
SIGNAL = {"signal_id": "s1", "workflow_id": "wf", "run_id": "r1", "task": "ingest", "state": 0,
          "outcome": "SUCCESS", "ts_ms": 5, "tsa": [1, 5], "tsa_resolution_ms": 1, "intensity": 1.0,
          "node_id": "edge-1", "resources": {"cpu": 1.0}, "data_size_bytes": 1024, "run_ended": False,
          "inputs": ["raw.png"], "outputs": ["features.npy"], "attributes": {"org:group": "ops"},
          "error_class": None, "attempt": 1, "recovery": None, "policy_version": None}


class FakeIds:
    """A registry's id lookup: the boundary the codec needs (the HTTP path is tested in test_registry)."""

    def __init__(self):
        from schemas import schema_json

        self.by_name = {name: 100 + i for i, name in enumerate(SCHEMA_NAMES)}
        self.by_id = {v: schema_json(k) for k, v in self.by_name.items()}

    def id_for(self, name):
        return self.by_name[name]

    def schema_for(self, schema_id):
        return self.by_id[schema_id]


def test_single_object_round_trip_and_header():
    codec = Codec()
    raw = codec.encode("Telemetry", TELEMETRY)
    assert raw[:2] == b"\xc3\x01" and len(raw) > 10
    decoded = codec.decode(raw)
    assert decoded.schema_name == "Telemetry" and decoded.record == TELEMETRY


def test_every_schema_has_docs_on_every_field():
    from schemas import schema_json

    def walk(schema):
        for f in schema["fields"]:
            assert f.get("doc"), f"{schema['name']}.{f['name']} has no doc"
            t = f["type"]
            for candidate in (t if isinstance(t, list) else [t]):
                if isinstance(candidate, dict) and candidate.get("type") == "record":
                    walk(candidate)
                if isinstance(candidate, dict) and candidate.get("type") == "array" \
                        and isinstance(candidate["items"], dict) and candidate["items"].get("type") == "record":
                    walk(candidate["items"])

    for name in SCHEMA_NAMES:
        walk(schema_json(name))


def test_confluent_framing_round_trip_and_detection():
    ids = FakeIds()
    confluent = Codec(registry=ids)
    raw = confluent.encode("WorkflowSignal", SIGNAL)
    assert raw[0] == 0 and struct.unpack(">I", raw[1:5])[0] == ids.by_name["WorkflowSignal"]
    assert confluent.decode(raw).record == SIGNAL
    # A registry-aware codec still reads single-object messages, so producers can migrate.
    assert confluent.decode(Codec().encode("WorkflowSignal", SIGNAL)).record == SIGNAL
    # Without a registry a Confluent-framed message is a clear decode error.
    with pytest.raises(DecodeError, match="no schema registry"):
        Codec().decode(raw)


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty message"),
    (b"hello world", "unknown framing"),
    (b"\xc3\x01\x00\x01", "truncated single-object header"),
    (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown schema fingerprint"),
])
def test_garbage_is_a_decode_error_with_reason(raw, reason):
    with pytest.raises(DecodeError, match=reason):
        Codec().decode(raw)


def test_truncated_body_and_trailing_bytes_and_wrong_schema():
    codec = Codec()
    raw = codec.encode("Telemetry", TELEMETRY)
    with pytest.raises(DecodeError, match="corrupt Telemetry body"):
        codec.decode(raw[:-6])
    with pytest.raises(DecodeError, match="trailing bytes"):
        codec.decode(raw + b"\x00\x00")
    with pytest.raises(DecodeError, match="wrong schema: got Telemetry, expected CommandAck"):
        codec.decode(raw, expect="CommandAck")


def test_encoding_a_bad_record_names_the_schema():
    with pytest.raises(ValueError, match="does not fit schema Telemetry"):
        Codec().encode("Telemetry", {**TELEMETRY, "gpu_temp_c": "hot"})
    with pytest.raises(ValueError, match="unknown schema"):
        Codec().encode("Nope", {})


def test_topic_names_cover_every_schema():
    topics = TopicNames()
    assert {topics.for_schema(n) for n in SCHEMA_NAMES} <= set(topics.all())
