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

import struct
from functools import lru_cache
from io import BytesIO
from typing import Any, NamedTuple, Protocol

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import SCHEMA_NAMES, load_schema

_schemaless_reader = fastavro.schemaless_reader
_schemaless_writer = fastavro.schemaless_writer

SINGLE_OBJECT_MARKER = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"


class DecodeError(ValueError):
    """A message that does not decode; ``str(err)`` is the reason for the dead-letter header."""


class Decoded(NamedTuple):
    """A decoded message: the record and the name of the schema it was written with.

    A NamedTuple, not a frozen dataclass: one is made per message read, and a
    frozen dataclass's ``__init__`` (an ``object.__setattr__`` per field) costs
    several times a tuple's. It is as immutable and reads the same by name.
    """

    schema_name: str
    record: dict


class SchemaIds(Protocol):
    """What the codec needs from a schema registry (see `schemas.registry.RegistrySchemaIds`)."""

    def id_for(self, schema_name: str) -> int: ...

    def schema_for(self, schema_id: int) -> dict: ...


def _fingerprint(parsed: dict) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


# -- compiled fast paths ------------------------------------------------------------------------
#
# fastavro interprets the schema on every call: ~4 µs to read a WorkflowSignal, ~7.5 µs to write
# a NextStepPrediction, a quarter of the workflow flow's per-signal budget. For each schema made
# of the constructs the project uses (records, string, int, long, double, boolean, null, enum,
# array, map, and unions of null with one of these) the codec generates a plain Python reader
# and writer once (~2x faster), with fastavro as the authority:
#
# * the fast paths accept only the canonical case (exact Python types, ints in range, no
#   field missing, union indexes of one byte and enum indexes in range, booleans 0 or 1,
#   string lengths and block counts >= 0, varints of at most 9 bytes, no read past the
#   end); on anything else they give up
#   (`_Fallback`, or whatever exception) and the message goes through fastavro, which gives
#   the same result or the same error as before;
# * where they accept, they produce exactly fastavro's bytes and records (same values, same
#   key order). A schema with anything else (logical types, bytes, fixed, named references,
#   other unions) is not compiled and always goes through fastavro.

_PRIMITIVES = {"null", "boolean", "int", "long", "double", "string"}
_INT_RANGE = {"int": (-(1 << 31), (1 << 31) - 1), "long": (-(1 << 63), (1 << 63) - 1)}


class _Fallback(Exception):
    """A fast path met something non-canonical: use fastavro for this message."""


class _Unsupported(Exception):
    """A schema construct the fast paths do not compile."""


def _type_of(schema) -> str:
    if isinstance(schema, str):
        if schema not in _PRIMITIVES:
            raise _Unsupported(schema)  # a named reference
        return schema
    if isinstance(schema, list):
        return "union"
    if not isinstance(schema, dict) or "logicalType" in schema:
        raise _Unsupported(str(schema))
    kind = schema.get("type")
    if kind in _PRIMITIVES:
        return kind
    if kind not in ("record", "enum", "array", "map"):
        raise _Unsupported(str(kind))
    return kind


def _nullable(schema) -> tuple[int, object]:
    """``(index of the non-null branch, its schema)`` of a ``[null, X]`` union."""
    if len(schema) != 2 or "null" not in schema:
        raise _Unsupported("union other than [null, X]")
    other = 1 - schema.index("null")
    if _type_of(schema[other]) in ("union", "null"):
        raise _Unsupported("nested union")
    return other, schema[other]


class _Source:
    """Lines of generated code, with fresh variable names."""

    def __init__(self):
        self.lines: list[str] = []
        self.names = 0
        self.consts: dict[str, object] = {}

    def var(self, prefix: str = "v") -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    def const(self, value) -> str:
        name = f"K{len(self.consts)}"
        self.consts[name] = value
        return name

    def add(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def compile(self, schema, emit, head: str, tail: str, kind: str, helpers: dict):
        """Generate the body with ``emit`` for a record schema and compile ``head + body + tail``.

        Returns the function (its source in ``.source``), or None when the schema
        has a construct the fast paths do not compile.
        """
        try:
            if _type_of(schema) != "record":
                raise _Unsupported("top level is not a record")
            emit(schema, "record", 1)
        except _Unsupported:
            return None
        code = "\n".join([head, *self.lines, tail]) + "\n"
        namespace = {"_Fallback": _Fallback, **helpers, **self.consts}
        exec(compile(code, f"<avro {kind} {schema.get('name')}>", "exec"), namespace)  # noqa: S102
        function = namespace[head.split()[1].split("(")[0]]
        function.source = code
        return function


#: Strings the writers met, as the bytes they encode to (length varint + UTF-8): the workflow, node
#: and task names of a stream repeat in nearly every record, and one lookup replaces a type check,
#: an ``encode``, the length's varint and two appends. Only short strings, and cleared when full:
#: bounded memory (~0.5 MB) whatever the stream. Shared by every writer of the process (a lookup and
#: an insertion are atomic under the GIL; a clear at worst costs another thread a miss).
_STRING_BYTES: dict[str, bytes] = {}
_STRING_BYTES_MAX = 4096
_STRING_BYTES_LONGEST = 64


def _string_bytes(value) -> bytes:
    """The Avro encoding of the string ``value`` (its length's zig-zag varint, then UTF-8), remembered when short."""
    if type(value) is not str:
        raise _Fallback
    body = value.encode()
    z = len(body) << 1
    head = bytearray()
    while z > 0x7F:
        head.append((z & 0x7F) | 0x80)
        z >>= 7
    head.append(z)
    encoded = bytes(head) + body
    if len(body) <= _STRING_BYTES_LONGEST:
        if len(_STRING_BYTES) >= _STRING_BYTES_MAX:
            _STRING_BYTES.clear()
        _STRING_BYTES[value] = encoded
    return encoded


def _compile_writer(schema):
    """``write(record, out: bytearray)`` for ``schema``, or ``None`` when it is not compilable."""
    src = _Source()

    def varint(zigzagged: str, d: int) -> None:
        # ``zigzagged``: an expression of the non-negative zig-zag value; one byte inline
        z = src.var("z")
        src.add(d, f"{z} = {zigzagged}")
        src.add(d, f"if {z} < 0x80: out.append({z})")
        src.add(d, "else:")
        src.add(d + 1, f"while {z} > 0x7F:")
        src.add(d + 2, f"out.append(({z} & 0x7F) | 0x80)")
        src.add(d + 2, f"{z} >>= 7")
        src.add(d + 1, f"out.append({z})")

    def emit(t, value: str, d: int) -> None:
        kind = _type_of(t)
        if kind == "null":
            src.add(d, f"if {value} is not None: raise _Fallback")
        elif kind == "boolean":
            src.add(d, f"if {value} is True: out.append(1)")
            src.add(d, f"elif {value} is False: out.append(0)")
            src.add(d, "else: raise _Fallback")
        elif kind in ("int", "long"):
            lo, hi = _INT_RANGE[kind]
            src.add(d, f"if type({value}) is not int or not {lo} <= {value} <= {hi}: raise _Fallback")
            varint(f"({value} << 1) ^ ({value} >> 63)", d)
        elif kind == "double":
            src.add(d, f"if type({value}) is not float: raise _Fallback")
            src.add(d, f"out += _pack_double({value})")
        elif kind == "string":
            # a str equal to a remembered one encodes to the same bytes (a str subclass too, as in
            # fastavro); no other type equals a str key: anything else misses and is checked
            b = src.var("b")
            src.add(d, f"{b} = _strings.get({value})")
            src.add(d, f"out += {b} if {b} is not None else _string_bytes({value})")
        elif kind == "enum":
            index = src.const({s: i for i, s in enumerate(t["symbols"])})
            src.add(d, f"if type({value}) is not str or {value} not in {index}: raise _Fallback")
            varint(f"{index}[{value}] << 1", d)
        elif kind == "union":
            other, branch = _nullable(t)
            src.add(d, f"if {value} is None: out.append({(1 - other) * 2})")
            src.add(d, "else:")
            src.add(d + 1, f"out.append({other * 2})")
            emit(branch, value, d + 1)
        elif kind == "array":
            item = src.var()
            src.add(d, f"if type({value}) is not list: raise _Fallback")
            src.add(d, f"if {value}:")
            varint(f"len({value}) << 1", d + 1)
            src.add(d + 1, f"for {item} in {value}:")
            emit(t["items"], item, d + 2)
            src.add(d, "out.append(0)")
        elif kind == "map":
            key, item = src.var("k"), src.var()
            src.add(d, f"if type({value}) is not dict: raise _Fallback")
            src.add(d, f"if {value}:")
            varint(f"len({value}) << 1", d + 1)
            src.add(d + 1, f"for {key}, {item} in {value}.items():")
            emit("string", key, d + 2)
            emit(t["values"], item, d + 2)
            src.add(d, "out.append(0)")
        else:  # record
            src.add(d, f"if type({value}) is not dict: raise _Fallback")
            for f in t["fields"]:
                field_value = src.var()
                src.add(d, f"{field_value} = {value}[{f['name']!r}]")
                emit(f["type"], field_value, d)

    return src.compile(schema, emit, "def write(record, out):", "", "writer",
                       {"_pack_double": struct.Struct("<d").pack, "_strings": _STRING_BYTES,
                        "_string_bytes": _string_bytes})


#: Optional fields in a row that the reader tests for all-null at once (fewer gain nothing).
_NULL_RUN = 3


def _null_runs(fields: list) -> list[range]:
    """``fields`` cut into ranges: each a run of optional fields (``[null, X]`` unions), or one other field."""
    runs: list[range] = []
    for i, f in enumerate(fields):
        if i and _is_optional(f) and _is_optional(fields[i - 1]):
            runs[-1] = range(runs[-1].start, i + 1)
        else:
            runs.append(range(i, i + 1))
    return runs


def _is_optional(field: dict) -> bool:
    return isinstance(field["type"], list) and "null" in field["type"]


def _compile_reader(schema):
    """``read(raw, pos) -> (record, end)`` for ``schema``, or ``None`` when it is not compilable.

    No read checks the length of ``raw``: reading a byte past the end raises, and a
    string or double that runs past it leaves ``end`` beyond ``len(raw)``, which
    `Codec.decode` does not accept from a fast path.
    """
    src = _Source()

    def varint(target: str, d: int) -> None:
        # at most 9 bytes (63 bits): a 10th is beyond int64 or non-canonical, fastavro decides
        b, shift = src.var("b"), src.var("s")
        src.add(d, f"{target} = raw[pos]")
        src.add(d, "pos += 1")
        src.add(d, f"if {target} > 0x7F:")
        src.add(d + 1, f"{target} &= 0x7F")
        src.add(d + 1, f"{shift} = 7")
        src.add(d + 1, "while True:")
        src.add(d + 2, f"{b} = raw[pos]")
        src.add(d + 2, "pos += 1")
        src.add(d + 2, f"{target} |= ({b} & 0x7F) << {shift}")
        src.add(d + 2, f"if {b} < 0x80: break")
        src.add(d + 2, f"{shift} += 7")
        src.add(d + 2, f"if {shift} > 56: raise _Fallback")

    def long(target: str, d: int) -> None:
        varint(target, d)
        src.add(d, f"{target} = ({target} >> 1) ^ -({target} & 1)")

    def count(target: str, d: int) -> None:
        # a string's length or a block's item count: a negative one (odd zig-zag; for blocks, one
        # with a byte size: rare) is fastavro's
        varint(target, d)
        src.add(d, f"if {target} & 1: raise _Fallback")
        src.add(d, f"{target} >>= 1")

    def emit(t, target: str, d: int) -> None:
        kind = _type_of(t)
        if kind == "null":
            src.add(d, f"{target} = None")
        elif kind == "boolean":
            b = src.var("b")
            src.add(d, f"{b} = raw[pos]")
            src.add(d, "pos += 1")
            src.add(d, f"if {b} > 1: raise _Fallback")
            src.add(d, f"{target} = {b} == 1")
        elif kind in ("int", "long"):
            long(target, d)
            if kind == "int":
                lo, hi = _INT_RANGE["int"]
                src.add(d, f"if not {lo} <= {target} <= {hi}: raise _Fallback")
        elif kind == "double":
            src.add(d, f"{target} = _unpack_double(raw, pos)[0]")
            src.add(d, "pos += 8")
        elif kind == "string":
            n = src.var("n")
            count(n, d)
            src.add(d, f"{target} = raw[pos:pos + {n}].decode()")
            src.add(d, f"pos += {n}")
        elif kind == "enum":
            # the symbol by the index's zig-zag byte: the first 64 symbols take one byte; a later one (a
            # continuation byte) or a bad index is a KeyError, and fastavro decides
            symbols = src.const({2 * i: symbol for i, symbol in enumerate(t["symbols"][:64])})
            src.add(d, f"{target} = {symbols}[raw[pos]]")
            src.add(d, "pos += 1")
        elif kind == "union":
            # the branch index of [null, X] is 0 or 1: canonically one byte, its zig-zag 0 or 2
            other, branch = _nullable(t)
            i = src.var("i")
            src.add(d, f"{i} = raw[pos]")
            src.add(d, "pos += 1")
            src.add(d, f"if {i} == {2 * (1 - other)}: {target} = None")
            src.add(d, f"elif {i} == {2 * other}:")
            emit(branch, target, d + 1)
            src.add(d, "else: raise _Fallback")
        elif kind in ("array", "map"):
            n, item = src.var("n"), src.var()
            src.add(d, f"{target} = {'[]' if kind == 'array' else '{}'}")
            count(n, d)
            src.add(d, f"while {n}:")
            src.add(d + 1, f"for _ in range({n}):")
            if kind == "array":
                emit(t["items"], item, d + 2)
                src.add(d + 2, f"{target}.append({item})")
            else:
                key = src.var("k")
                emit("string", key, d + 2)
                emit(t["values"], item, d + 2)
                src.add(d + 2, f"{target}[{key}] = {item}")
            count(n, d + 1)
        else:  # record: keys in field order, as fastavro
            fields = [(f["name"], src.var()) for f in t["fields"]]
            for run in _null_runs(t["fields"]):
                values = [value for _, value in fields[run.start:run.stop]]
                if len(values) < _NULL_RUN:
                    for f, value in zip(t["fields"][run.start:run.stop], values):
                        emit(f["type"], value, d)
                    continue
                # optional fields in a row, all null (their null branch's index bytes): one comparison
                nulls = src.const(bytes(2 * f["type"].index("null") for f in t["fields"][run.start:run.stop]))
                src.add(d, f"if raw[pos:pos + {len(values)}] == {nulls}:")
                src.add(d + 1, " = ".join(values) + " = None")
                src.add(d + 1, f"pos += {len(values)}")
                src.add(d, "else:")
                for f, value in zip(t["fields"][run.start:run.stop], values):
                    emit(f["type"], value, d + 1)
            src.add(d, f"{target} = {{" + ", ".join(f"{name!r}: {value}" for name, value in fields) + "}")

    return src.compile(schema, emit, "def read(raw, pos):", "    return record, pos", "reader",
                       {"_unpack_double": struct.Struct("<d").unpack_from})


@lru_cache(maxsize=None)
def _fast_paths(schema_name: str) -> tuple:
    """The compiled ``(writer, reader)`` of a schema, once per process (``None`` where not compiled)."""
    schema = load_schema(schema_name)
    return _compile_writer(schema), _compile_reader(schema)


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
        self._fast_write = {name: _fast_paths(name)[0] for name in SCHEMA_NAMES}
        self._fast_read = {name: _fast_paths(name)[1] for name in SCHEMA_NAMES}
        self._fast_read_by_id: dict[int, Any] = {}  # Confluent ids written with exactly our schema
        # the single-object hot paths: one dict lookup from the schema name or the 10-byte header
        self._encode_single = {name: (self._header[name], w) for name, w in self._fast_write.items() if w}
        self._decode_single = {self._header[name]: (name, r) for name, r in self._fast_read.items() if r}

    def encode(self, schema_name: str, record: dict) -> bytes:
        """Serialise ``record`` with the named schema; raises `ValueError` if it does not fit."""
        fast = self._encode_single.get(schema_name) if self.registry is None else None
        if fast is not None:
            header, write = fast
        else:
            if schema_name not in self._parsed:
                raise ValueError(f"unknown schema {schema_name!r}; known: {', '.join(SCHEMA_NAMES)}")
            if self.registry is None:
                header = self._header[schema_name]
            else:
                header = CONFLUENT_MAGIC + struct.pack(">I", self.registry.id_for(schema_name))
            write = self._fast_write[schema_name]
        if write is not None:
            out = bytearray(header)
            try:
                write(record, out)
            except Exception:  # not the canonical case: fastavro decides (see `_compile_writer`)
                pass
            else:
                return bytes(out)
        buf = BytesIO()
        buf.write(header)
        try:
            _schemaless_writer(buf, self._parsed[schema_name], record)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ValueError(f"record does not fit schema {schema_name}: {err}") from err
        return buf.getvalue()

    def decode(self, raw: bytes | None, expect: str | None = None) -> Decoded:
        """Decode ``raw``; with ``expect``, a record of another schema is an error too."""
        if not raw:
            raise DecodeError("empty message")
        fast = self._decode_single.get(raw[:10])  # single-object framing, a compiled schema
        if fast is not None and (expect is None or fast[0] == expect):
            try:
                record, end = fast[1](raw, 10)
            except Exception:  # not the canonical case: fastavro decides (see `_compile_reader`)
                pass
            else:
                if end == len(raw):
                    return Decoded(fast[0], record)
        if raw[:2] == SINGLE_OBJECT_MARKER:
            if len(raw) < 10:
                raise DecodeError("truncated single-object header")
            name = self._by_fingerprint.get(raw[2:10])
            if name is None:
                raise DecodeError(f"unknown schema fingerprint {raw[2:10].hex()}")
            # written with our own schema: read with it alone (the fast path was tried above)
            writer, reader, start, read = self._parsed[name], None, 10, None
        elif raw[:1] == CONFLUENT_MAGIC:
            if len(raw) < 5:
                raise DecodeError("truncated Confluent header")
            (schema_id,) = struct.unpack(">I", raw[1:5])
            name, writer = self._confluent_writer(schema_id)
            reader, start, read = self._parsed[name], 5, self._fast_read_by_id.get(schema_id)
        else:
            raise DecodeError(f"unknown framing: first bytes {raw[:2].hex()}")
        if expect is not None and name != expect:
            raise DecodeError(f"wrong schema: got {name}, expected {expect}")
        if read is not None:
            try:
                record, end = read(raw, start)
            except Exception:  # not the canonical case: fastavro decides (see `_compile_reader`)
                pass
            else:
                if end == len(raw):
                    return Decoded(name, record)
        stream = BytesIO(raw)  # the body is read in place, not copied
        stream.seek(start)
        try:
            record = _schemaless_reader(stream, writer, reader)
        except (EOFError, StopIteration, ValueError, IndexError, UnicodeDecodeError, TypeError) as err:
            raise DecodeError(f"corrupt {name} body: {type(err).__name__}") from err
        end = stream.tell()
        if end != len(raw):
            raise DecodeError(f"{len(raw) - end} trailing bytes after {name} body")
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
        if resolved[1] == self._parsed[name]:  # fastavro then reads with the writer's schema alone too
            self._fast_read_by_id[schema_id] = self._fast_read[name]
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
