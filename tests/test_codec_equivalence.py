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
