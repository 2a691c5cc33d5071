"""Avro encoding of every Liquid Workflow message, in one of two framings.

* **Single-object encoding** (the embedded default, no registry): ``C3 01``, the
  8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing
  canonical form, then the Avro binary body. The Avro specification defines it
  for exactly this case: the fingerprint names the schema without a registry.
* **Confluent wire format** (a schema registry is configured): magic byte ``00``,
  the 4-byte big-endian schema id, then the Avro binary body.

`Codec.decode` recognises either framing by its first bytes, so a consumer keeps
working while producers move from one to the other. Anything it cannot decode
raises `DecodeError` with a reason short enough for a Kafka header; the flows
send such messages to the dead-letter topic and carry on.

>>> codec = Codec()
>>> raw = codec.encode("Alert", {"alert_id": "a1", "node_id": "n1", "kind": "anomaly",
...     "start_ts_ms": 1000, "peak_ts_ms": 2000, "peak_score": 0.9, "samples": 3,
...     "contributing_features": ["gpu_temp_c"], "message": "hot"})
>>> raw[:2].hex()
'c301'
>>> codec.decode(raw).record["peak_score"]
0.9
>>> codec.decode(b"garbage")
Traceback (most recent call last):
...
schemas.codec.DecodeError: unknown framing: first bytes 6761
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import SCHEMA_NAMES, load_schema

SINGLE_OBJECT_MARKER = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"


class DecodeError(ValueError):
    """A message that does not decode; ``str(err)`` is the reason for the dead-letter header."""


@dataclass(frozen=True)
class Decoded:
    """A decoded message: the record and the name of the schema it was written with."""

    schema_name: str
    record: dict


class SchemaIds(Protocol):
    """What the codec needs from a schema registry (see `schemas.registry.RegistrySchemaIds`)."""

    def id_for(self, schema_name: str) -> int: ...

    def schema_for(self, schema_id: int) -> dict: ...


def _fingerprint(parsed: dict) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


class Codec:
    """Encodes and decodes the project's records.

    With ``registry=None`` it writes single-object encoding; with a `SchemaIds`
    it writes the Confluent framing. It reads both either way (Confluent
    messages need the registry to resolve their id).
    """

    def __init__(self, registry: SchemaIds | None = None):
        self.registry = registry
        self._parsed = {name: load_schema(name) for name in SCHEMA_NAMES}
        self._by_fingerprint = {_fingerprint(s): name for name, s in self._parsed.items()}
        self._header = {name: SINGLE_OBJECT_MARKER + _fingerprint(s) for name, s in self._parsed.items()}
        self._writer_by_id: dict[int, tuple[str, dict]] = {}

    def encode(self, schema_name: str, record: dict) -> bytes:
        """Serialise ``record`` with the named schema; raises `ValueError` if it does not fit."""
        try:
            schema = self._parsed[schema_name]
        except KeyError:
            raise ValueError(f"unknown schema {schema_name!r}; known: {', '.join(SCHEMA_NAMES)}") from None
        buf = io.BytesIO()
        if self.registry is None:
            buf.write(self._header[schema_name])
        else:
            buf.write(CONFLUENT_MAGIC + struct.pack(">I", self.registry.id_for(schema_name)))
        try:
            fastavro.schemaless_writer(buf, schema, record)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ValueError(f"record does not fit schema {schema_name}: {err}") from err
        return buf.getvalue()

    def decode(self, raw: bytes | None, expect: str | None = None) -> Decoded:
        """Decode ``raw``; with ``expect``, a record of another schema is an error too."""
        if not raw:
            raise DecodeError("empty message")
        if raw[:2] == SINGLE_OBJECT_MARKER:
            if len(raw) < 10:
                raise DecodeError("truncated single-object header")
            name = self._by_fingerprint.get(raw[2:10])
            if name is None:
                raise DecodeError(f"unknown schema fingerprint {raw[2:10].hex()}")
            writer = self._parsed[name]
            body = raw[10:]
        elif raw[:1] == CONFLUENT_MAGIC:
            if len(raw) < 5:
                raise DecodeError("truncated Confluent header")
            (schema_id,) = struct.unpack(">I", raw[1:5])
            name, writer = self._confluent_writer(schema_id)
            body = raw[5:]
        else:
            raise DecodeError(f"unknown framing: first bytes {raw[:2].hex()}")
        if expect is not None and name != expect:
            raise DecodeError(f"wrong schema: got {name}, expected {expect}")
        stream = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(stream, writer, self._parsed[name])
        except (EOFError, StopIteration, ValueError, IndexError, UnicodeDecodeError, TypeError) as err:
            raise DecodeError(f"corrupt {name} body: {type(err).__name__}") from err
        if stream.tell() != len(body):
            raise DecodeError(f"{len(body) - stream.tell()} trailing bytes after {name} body")
        return Decoded(name, record)

    def _confluent_writer(self, schema_id: int) -> tuple[str, dict]:
        if schema_id in self._writer_by_id:
            return self._writer_by_id[schema_id]
        if self.registry is None:
            raise DecodeError(f"Confluent-framed message (schema id {schema_id}) but no schema registry configured")
        try:
            writer_json = self.registry.schema_for(schema_id)
        except Exception as err:  # the registry is remote: any failure is a decode failure
            raise DecodeError(f"schema id {schema_id} not resolvable: {err}") from err
        name = writer_json.get("name")
        if name not in self._parsed:
            raise DecodeError(f"schema id {schema_id} is {name!r}, not a Liquid Workflow schema")
        resolved = (name, fastavro.parse_schema(writer_json))
        self._writer_by_id[schema_id] = resolved
        return resolved


def field_names(schema_name: str) -> list[str]:
    """Top-level field names of a schema, in order (used by the JSON dumps and CSV readers)."""
    return [f["name"] for f in load_schema(schema_name)["fields"]]


def jsonable(record: Any) -> Any:
    """A decoded record made JSON-safe (bytes to hex); Avro maps and arrays pass through."""
    if isinstance(record, dict):
        return {k: jsonable(v) for k, v in record.items()}
    if isinstance(record, list):
        return [jsonable(v) for v in record]
    if isinstance(record, bytes):
        return record.hex()
    return record
