"""Decoded records as the flows carry them, and a flow input from any Bytewax source.

Every flow works on ``(key, Event)`` items. From Kafka they come decoded as they
are read (`operators.kafka_io.kafka_input`); from anything else — a file, a
test's `bytewax.testing.TestingSource` — `keyed_input` makes them from
``(schema name, record)`` items, so a flow runs the same without a broker.
"""

from __future__ import annotations

from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source


class Event(NamedTuple):
    """A decoded record with its origin (kept for event-time and replay bookkeeping).

    A NamedTuple, not a frozen dataclass: one is built per message read, and a
    frozen dataclass's ``__init__`` (five ``object.__setattr__`` calls) costs
    about four times as much. It is as immutable, and reads the same by name.

    >>> e = Event("WorkflowSignal", {"task": "a"}, "workflow.signals", 0, 7)
    >>> e.schema_name, e.offset
    ('WorkflowSignal', 7)
    """

    schema_name: str
    record: dict
    topic: str
    partition: int
    offset: int


def keyed_input(flow: Dataflow, step_id: str, source: Source, key_by: dict[str, str]) -> op.KeyedStream:
    """``(key, Event)`` items from a source of ``(schema name, record)`` items.

    ``key_by`` names, per record type, the field that keys it (as the Kafka
    wiring keys by the topic's key field); a record type not in it is an error.
    """

    def keyed(item) -> tuple[str, Event]:
        schema_name, record = item
        try:
            field = key_by[schema_name]
        except KeyError:
            raise ValueError(f"{step_id}: a {schema_name} record is not an input of this flow "
                             f"(expected {', '.join(key_by)})") from None
        return record[field], Event(schema_name, record, step_id, 0, -1)

    return op.map(f"{step_id}_keyed", op.input(step_id, flow, source), keyed)
