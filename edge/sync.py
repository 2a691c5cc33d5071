"""Sync of execution records, node side: out through the outbox, answers back from the central store.

`SyncManager`: every ``interval_s`` it takes up to ``batch_size`` pending
records from the node's `edge.records.ExecutionStore` (executions before steps,
oldest change first), puts each as an ``ExecutionRecord`` into the worker's
durable outbox, commits the outbox, and only then marks them ``queued`` (a
crash in between sends them again; never loses them). The outbox's delivery
report marks a record ``sent``. The central side (``liquid flow run sync``:
`flows.sync` over `fingerprint.store.CentralExecutions`) answers each version
with a signed ``SyncOutcome`` on ``edge.sync``; `SyncOutcomeListener` checks
the signature like a command's and `SyncManager.answer` records it: the row
becomes ``accepted``, ``superseded`` (with the central values) or
``conflict``. A version sent and not answered within ``resend_after_s`` goes
out again (the central side deduplicates it and repeats its answer): a broker
that lost records, or an answer that was lost, costs a resend, not the record.

>>> import os, tempfile
>>> from edge.records import ExecutionStore
>>> store = ExecutionStore(os.path.join(tempfile.mkdtemp(), "records.db"), "edge-1")
>>> _ = store.upsert("execution", "run-1", "run-1", "inspection", "failed", {"error": "camera timeout"})
>>> outbox = []
>>> manager = SyncManager(store, lambda record: outbox.append(record) is None)
>>> manager.sync_once(), [r["record_id"] for r in outbox]
(1, ['execution:run-1@1'])
>>> manager.delivered("execution:run-1@1")                       # the broker has it
>>> manager.answer({"outcome": "SUPERSEDED", "entity": "execution", "entity_id": "run-1", "edge_version": 1,
...                 "record_id": "execution:run-1@1", "central_status": "reviewed", "central_fields": {},
...                 "central_modified_ms": 5_000})
True
>>> {k: store.get("execution", "run-1")[k] for k in ("status", "sync_status", "central_seen_ms")}
{'status': 'reviewed', 'sync_status': 'superseded', 'central_seen_ms': 5000}
"""

from __future__ import annotations

import sqlite3
import threading
import time

from confluent_kafka import OFFSET_BEGINNING

from edge.listener import EDGE_FETCH_WAIT_MS, CommandListener
from schemas.kafka import partition_ends


def sync_record_id(entity: str, entity_id: str, edge_version: int) -> str:
    return f"{entity}:{entity_id}@{edge_version}"


def parse_sync_record_id(record_id: str) -> tuple[str, str, int]:
    head, version = record_id.rsplit("@", 1)
    entity, entity_id = head.split(":", 1)
    return entity, entity_id, int(version)


class SyncManager:
    """Moves a node's pending execution records into its outbox, batched and in priority order.

    Parameters
    ----------
    store
        The node's `edge.records.ExecutionStore`.
    publish
        ``(ExecutionRecord dict) -> bool``: into the outbox (False when it refused).
    commit
        ``() -> None``: makes what ``publish`` stored durable (``Outbox.commit``); called
        before a batch is marked ``queued``.
    batch_size, interval_s
        Records per batch, and seconds between batches.
    resend_after_s
        A record sent and not answered by the central side this long is sent again; while
        resends get no answer at all (no sync flow runs), the wait doubles, up to
        ``max_resend_s``, so a cluster without a central store is not flooded.
    """

    def __init__(self, store, publish, commit=None, batch_size: int = 200, interval_s: float = 1.0,
                 resend_after_s: float = 60.0, max_resend_s: float = 3600.0):
        self.store, self.publish, self.commit = store, publish, commit
        self.batch_size, self.interval_s, self.resend_after_s = batch_size, interval_s, resend_after_s
        self.max_resend_s = max_resend_s
        self._backoff = 1.0               # doubles while resends go unanswered; 1 again at the next answer
        self._answered_since_resend = True
        self.answers: dict[str, int] = {}          # answers recorded, by outcome
        self.round_trips_ms: list[float] = []      # queued → answered, of versions queued by this process
        self._queued_at: dict[str, float] = {}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_once(self) -> int:
        """One batch; returns how many records went to the outbox."""
        batch = self.store.pending(self.batch_size)
        queued = []
        for row in batch:
            record = {**row, "record_id": sync_record_id(row["entity"], row["entity_id"], row["edge_version"])}
            if not self.publish(record):
                break  # the outbox is full of more urgent records: resume from here next time
            queued.append((row["entity"], row["entity_id"], row["edge_version"]))
        if queued:
            if self.commit is not None:
                self.commit()  # durable in the outbox before the store stops offering them
            now = time.monotonic()
            self._queued_at.update((sync_record_id(*key), now) for key in queued)
            self.store.mark(queued, "queued")
            self.store.log("queued", len(queued))
        return len(queued)

    def delivered(self, record_id: str) -> None:
        """The outbox's delivery report for an ExecutionRecord: the broker has it."""
        self.store.mark([parse_sync_record_id(record_id)], "sent", only_from="queued")

    def answer(self, outcome: dict) -> bool:
        """A SyncOutcome from the central store (already verified); False when the version is not the row's."""
        taken = self.store.answer(outcome)
        if taken:
            self._backoff, self._answered_since_resend = 1.0, True
            self.answers[outcome["outcome"]] = self.answers.get(outcome["outcome"], 0) + 1
            queued_at = self._queued_at.pop(outcome["record_id"], None)
            if queued_at is not None:
                self.round_trips_ms.append((time.monotonic() - queued_at) * 1000)
        return taken

    def start(self) -> SyncManager:
        self._thread = threading.Thread(target=self._loop, name="execution-sync", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.resend_unanswered()
            while self.sync_once() == self.batch_size and not self._halt.is_set():
                pass  # a backlog: keep going batch after batch

    @property
    def resend_wait_s(self) -> float:
        """How long a sent record waits for its answer before it is sent again, now."""
        return min(self.resend_after_s * self._backoff, self.max_resend_s)

    def resend_unanswered(self) -> int:
        """Put records sent and unanswered for the current resend wait back to pending; how many."""
        wait_s = self.resend_wait_s
        resent = self.store.resend_unanswered(wait_s)
        if resent:
            if not self._answered_since_resend:
                self._backoff *= 2
            self._answered_since_resend = False
            self.store.log("resend", resent, f"no central answer in {wait_s:.0f} s")
        return resent

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sync_once()


class TopicPosition:
    """Where a listener has read a topic to, per partition, in a small SQLite file of the node's.

    The next offset to read is stored after each batch is handled, in one transaction: a
    crash in between reads that batch again (answers are idempotent), never skips one.

    >>> import os, tempfile
    >>> position = TopicPosition(os.path.join(tempfile.mkdtemp(), "positions.db"), "edge.sync")
    >>> position.load()
    {}
    >>> position.save({0: 17, 1: 4})
    >>> position.save({1: 9})
    >>> TopicPosition(position.path, "edge.sync").load()
    {0: 17, 1: 9}
    """

    def __init__(self, path, topic: str):
        self.path, self.topic = str(path), topic
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS position (topic TEXT NOT NULL, partition INTEGER NOT NULL, "
                         "next_offset INTEGER NOT NULL, PRIMARY KEY (topic, partition))")

    def load(self) -> dict[int, int]:
        """``{partition: next offset}`` stored for the topic (empty at the first start)."""
        return dict(self._db.execute("SELECT partition, next_offset FROM position WHERE topic = ?", (self.topic,)))

    def save(self, next_offsets: dict[int, int]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO position VALUES (?, ?, ?)",
                             [(self.topic, p, o) for p, o in next_offsets.items()])
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class SyncOutcomeListener(CommandListener):
    """The central store's answers for this worker's nodes (``edge.sync``), checked like commands.

    With a ``position`` (`TopicPosition`), a restarted node resumes where it had read to:
    the topic holds every node's answers, and re-reading all of them at every start
    grows with the fleet's history. Without one, or for a partition with nothing stored,
    it reads from the beginning (answers are idempotent: one for a version the node has
    moved past changes nothing). A stored offset past the log's end or before its start
    (a broker that lost its log, a topic recreated) is read from the log's start; a
    recreated log that has grown past the stored offset by the restart is read from
    there, and an answer skipped that way costs a resend (`SyncManager`), not the record.

    With a ``verify`` (the worker's keyring), an unsigned, forged, expired or replayed
    answer is counted in ``rejected`` and ignored: it is not a command, so nothing is
    acknowledged; an unanswered record is sent again later.
    """

    def __init__(self, settings, topic: str, nodes: set[str], on_outcome, codec=None, verify=None,
                 position: TopicPosition | None = None, fetch_wait_ms: int | None = EDGE_FETCH_WAIT_MS):
        from schemas.kafka import KafkaSettings

        earliest = KafkaSettings(settings.bootstrap, {**settings.config, "auto.offset.reset": "earliest"})
        super().__init__(earliest, topic, "", nodes, on_outcome, codec, schema_name="SyncOutcome",
                         from_beginning=True, verify=verify, publish_ack=lambda ack: None, fetch_wait_ms=fetch_wait_ms)
        self.kind = "SYNC"
        self.position = position

    def _start_offsets(self, consumer, partitions) -> dict[int, int]:
        stored = self.position.load() if self.position is not None else {}
        if not stored:
            return {p: OFFSET_BEGINNING for p in partitions}
        # A stored offset outside the log (a broker that lost its log, a recreated topic) is
        # read from the start: not every broker answers it with OFFSET_OUT_OF_RANGE (Tansu
        # returns nothing and the listener would wait there for ever).
        ends = partition_ends(consumer, self.topic, len(partitions))
        return {p: stored[p] if p in stored and ends[p][0] <= stored[p] <= ends[p][1] else OFFSET_BEGINNING
                for p in partitions}

    def _handled(self, batch: list) -> None:
        if self.position is not None and batch:
            next_offsets: dict[int, int] = {}
            for msg in batch:
                next_offsets[msg.partition()] = max(next_offsets.get(msg.partition(), 0), msg.offset() + 1)
            self.position.save(next_offsets)

    def _handle(self, raw: bytes) -> None:
        outcome = self._own_record(raw, "sync outcome")
        if outcome is None:
            return
        if self.verify is not None and self.verify(outcome, self.kind) is not None:
            self.rejected += 1
            return
        self.received += 1
        self.on_command(outcome)
