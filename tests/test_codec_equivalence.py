"""The codec's generated readers and writers agree with fastavro, record for record.

The codec compiles a plain-Python reader and writer per schema for speed and
falls back to fastavro for anything out of the ordinary; this property test
holds it to fastavro on random records of every schema (edge values, unicode,
NaN, long arrays and maps) and on corrupted messages.
"""

from __future__ import annotations

import io
import random
import struct

import fastavro
import pytest

from schemas import SCHEMA_NAMES, load_schema, schema_json
from schemas.codec import Codec, DecodeError

STRINGS = ["", "a", "edge-1", "ünïcödé ✓", "x" * 70, "\U0001F600", "a\x00b"]


def value(rng, t):
    if isinstance(t, list):
        return value(rng, rng.choice(t))
    if isinstance(t, dict) and t["type"] in ("null", "boolean", "int", "long", "double", "string", "bytes"):
        t = t["type"]
    if t == "null":
        return None
    if t == "boolean":
        return rng.random() < 0.5
    if t == "int":
        return rng.choice([0, 1, -1, 63, 64, -64, -65, 2**31 - 1, -2**31, rng.randint(-2**31, 2**31 - 1)])
    if t == "long":
        return rng.choice([0, -1, 64, -65, 2**63 - 1, -2**63, 1_700_000_000_000, rng.randint(-2**63, 2**63 - 1)])
    if t == "double":
        return rng.choice([0.0, -0.0, 1.5, -1e300, 1e-310, float("inf"), float("-inf"), float("nan"), rng.random()])
    if t == "string":
        return rng.choice(STRINGS + [f"s{rng.randint(0, 10**9)}"])
    if t == "bytes":
        return rng.choice([b"", b"\x00", bytes(range(256)), rng.randbytes(rng.randint(1, 300))])
    kind = t["type"]
    if kind == "enum":
        return rng.choice(t["symbols"])
    if kind == "array":
        return [value(rng, t["items"]) for _ in range(rng.choice([0, 1, 3, 70]))]
    if kind == "map":
        return {value(rng, "string"): value(rng, t["values"]) for _ in range(rng.choice([0, 1, 3, 70]))}
    if kind == "record":
        return {f["name"]: value(rng, f["type"]) for f in t["fields"]}
    raise ValueError(kind)


def typed(x):
    """Compare types and NaNs too (1 != 1.0 here, and nan == nan)."""
    if isinstance(x, dict):
        return ("dict", [(k, typed(v)) for k, v in x.items()])
    if isinstance(x, list):
        return ("list", [typed(v) for v in x])
    if isinstance(x, float):
        return ("float", struct.pack("<d", x))
    return (type(x).__name__, x)


def fastavro_body(name, record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, load_schema(name), record)
    return buf.getvalue()


def fastavro_read(name, body: bytes):
    return fastavro.schemaless_reader(io.BytesIO(body), load_schema(name), load_schema(name))


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_random_records_round_trip_exactly_as_fastavro(name):
    rng, codec = random.Random(f"{name}-7"), Codec()
    for _ in range(400):
        record = value(rng, schema_json(name))
        raw = codec.encode(name, record)
        assert raw[10:] == fastavro_body(name, record)               # same bytes as fastavro writes
        assert typed(codec.decode(raw).record) == typed(fastavro_read(name, raw[10:]))


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_corrupted_messages_decode_as_fastavro_would_or_fail_cleanly(name):
    rng, codec = random.Random(f"{name}-corrupt"), Codec()
    for _ in range(300):
        raw = bytearray(codec.encode(name, value(rng, schema_json(name))))
        if rng.random() < 0.5 and len(raw) > 11:
            raw = raw[:rng.randint(10, len(raw) - 1)]                  # truncated body
        else:
            i = rng.randint(10, len(raw) - 1)
            raw[i] ^= 1 << rng.randint(0, 7)                           # one flipped bit
        try:
            got = codec.decode(bytes(raw))
        except DecodeError:
            continue                                                   # a clean dead letter
        # Decoded anyway: it must be exactly what fastavro reads, with nothing left over.
        stream = io.BytesIO(bytes(raw[10:]))
        expected = fastavro.schemaless_reader(stream, load_schema(name), load_schema(name))
        assert stream.tell() == len(raw) - 10
        assert typed(got.record) == typed(expected)


def test_a_union_index_in_two_bytes_decodes_as_fastavro_reads_it():
    # 0x80 0x00 is a valid (non-canonical) varint 0: the fast reader leaves it to fastavro
    codec = Codec()
    record = {"signal_id": "s1", "workflow_id": "w", "run_id": "r1", "task": "a", "state": 1, "outcome": None,
              "ts_ms": 5, "tsa": [5], "tsa_resolution_ms": 1, "intensity": 0.5, "node_id": "n1",
              "resources": None, "data_size_bytes": None, "run_ended": False, "inputs": None, "outputs": None,
              "attributes": None, "error_class": None, "attempt": None, "recovery": None, "policy_version": None}
    raw = codec.encode("WorkflowSignal", record)
    at = 10 + sum(1 + len(record[f]) for f in ("signal_id", "workflow_id", "run_id", "task")) + 1
    assert raw[at] == 0  # the outcome's branch index: null
    stretched = raw[:at] + b"\x80\x00" + raw[at + 1:]
    assert fastavro_read("WorkflowSignal", stretched[10:]) == record
    assert codec.decode(stretched).record == record


class _Name(str):
    """A str subclass: fastavro writes it as the string it equals."""


def test_remembered_strings_encode_exactly_as_fastavro_writes_them(monkeypatch):
    # The writers remember the encoding of short strings (`_STRING_BYTES`): a hit, a miss, a string
    # too long to remember, one whose length takes two varint bytes, unicode, a str subclass, and
    # the clear when full (a small bound here, so the test passes it many times) all give fastavro's bytes.
    import schemas.codec as codec_module

    monkeypatch.setattr(codec_module, "_STRING_BYTES_MAX", 16)
    codec_module._STRING_BYTES.clear()
    rng, codec = random.Random("remembered"), Codec()
    names = ["w", "node-1", "ingest", "ünïcödé ✓", "x" * 64, "y" * 65, "z" * 200, "", _Name("infer")]
    for i in range(600):
        pick = rng.choice(names) if rng.random() < 0.7 else f"run-{rng.randint(0, 100)}"
        record = {"workflow_id": rng.choice(names), "run_id": pick, "node_id": rng.choice(names),
                  "after_task": rng.choice(names), "prefix_length": i, "ts_ms": 1_700_000_000_000 + i,
                  "candidates": [{"task": rng.choice(names), "probability": rng.random(),
                                  "expected_start_ts_ms": rng.choice([None, 5, 1_700_000_000_000])}
                                 for _ in range(rng.randint(0, 3))]}
        assert codec.encode("NextStepPrediction", record)[10:] == fastavro_body("NextStepPrediction", record)
    assert 0 < len(codec_module._STRING_BYTES) <= 16
    assert all(len(s.encode()) <= 64 for s in codec_module._STRING_BYTES)  # longer strings are not remembered
    assert "z" * 200 not in codec_module._STRING_BYTES


def test_a_remembered_string_does_not_let_another_type_through():
    codec = Codec()
    record = {"workflow_id": "w", "run_id": "r", "node_id": "n", "after_task": "a", "prefix_length": 1,
              "ts_ms": 5, "candidates": []}
    codec.encode("NextStepPrediction", record)                 # "r" is remembered now
    for other in (b"r", 7, None, ["r"]):
        bad = {**record, "run_id": other}
        try:
            expected = fastavro_body("NextStepPrediction", bad)
        except Exception:
            with pytest.raises(ValueError, match="NextStepPrediction"):
                codec.encode("NextStepPrediction", bad)
        else:
            assert codec.encode("NextStepPrediction", bad)[10:] == expected


def test_an_enum_past_64_symbols_is_read_as_fastavro_reads_it():
    # The fast reader takes an enum's index from one byte: from the 65th symbol on the index takes
    # two, and the reader must leave it to fastavro rather than read its first byte as a symbol.
    from schemas.codec import _compile_reader

    symbols = [f"S{i}" for i in range(100)]
    schema = {"type": "record", "name": "Many", "fields": [{"name": "e", "type": {"type": "enum", "name": "E",
                                                                                  "symbols": symbols}},
                                                           {"name": "n", "type": "long"}]}
    read = _compile_reader(fastavro.parse_schema(schema))
    for index in (0, 63, 64, 70, 99):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, {"e": symbols[index], "n": 3})
        raw = out.getvalue()
        try:
            record, end = read(raw, 0)
        except Exception:
            assert index >= 64  # not the one-byte case: fastavro decides
            continue
        assert index < 64 and end == len(raw) and record == {"e": symbols[index], "n": 3}
