"""The node's durable outbox: everything the worker publishes is written here before Kafka sees it.

A record is a row in a local SQLite database (WAL journal) until the broker has
acknowledged it; only then is the row deleted (in the transaction of the next
write, `FORGET_AFTER_S`: one commit per record). So a broker outage or a slow
link costs nothing but disk, and a worker restart loses nothing: the new
process finds the rows and sends them again (consumers deduplicate on the
record id, which every record carries).

* **Write-ahead, always.** Records are not sent straight to librdkafka and
  buffered only on failure: librdkafka's memory queue is exactly what is lost on
  a restart. What is on disk when: `Outbox.put` stages the record in memory and
  wakes the drain thread, which commits everything staged in one transaction
  before it reads the next batch (within a few ms; under a backlog one commit
  carries many records). A commit appends to the WAL with ``write()`` and, with
  ``synchronous=NORMAL``, no fsync: durable against a crash of the process (the
  kernel has the pages), not against power loss since the last checkpoint (SQLite
  fsyncs the WAL before each checkpoint); ``synchronous="FULL"`` fsyncs the WAL at
  every commit (power-loss safe; ``bench/outage.py`` measures both). A process
  crash can lose only what was staged and not yet committed; callers that must
  not lose a record commit at once (``put(wait=True)``: acks of local decisions)
  or call `Outbox.commit` before they act on it (an execution-record batch before
  it is marked queued), and `close` commits what is staged.
* **Bounded by count, bytes and age.** At ``max_records`` or ``max_bytes`` the priorities decide:
  telemetry (the lowest class) is thinned — every second buffered telemetry
  record of the older half is deleted, the oldest kept, so the outage stays
  covered from its start at a coarser resolution — and each deleted record is
  counted in ``downsampled``. A record
  of a higher class is never thinned; when the outbox holds nothing of a lower
  class it refuses the new record and counts it in ``refused``. Rows older than
  ``max_age_s`` expire (counted in ``expired``). The counters live in the
  database, so they survive restarts too (the delivered count is derived: a
  written row leaves delivered, thinned or expired).
* **Drained in order, by priority.** Acks first, then workflow signals, then
  telemetry; within a class in the order written, so the order per topic and
  key is the order of production. The producer is idempotent with no message
  timeout (librdkafka retries until the broker is back) and at most
  ``max_in_flight`` records are handed to it at once; the drain rate is bounded
  by a token bucket (``drain_rate`` records/s) so a backlog does not starve the
  live streams of other nodes on the same broker.

>>> import tempfile, os
>>> box = Outbox(os.path.join(tempfile.mkdtemp(), "outbox.db"), max_records=4)
>>> for i in range(4):
...     box.put("edge.telemetry", b"n1", b"t%d" % i, TELEMETRY, f"n1-t{i}")
True
True
True
True
>>> box.put("edge.acks", b"n1", b"ack", ACK, "n1-a0")   # full: the oldest telemetry is thinned
True
>>> box.pending(), box.counters()["downsampled"]
(4, 1)
>>> [row.record_id for row in box.peek(10)]               # acks first, then telemetry in order
['n1-a0', 'n1-t0', 'n1-t2', 'n1-t3']
>>> box.close()
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Priority classes, most urgent first (lower drains first, higher is thinned first).
ACK, SIGNAL, TELEMETRY = 0, 1, 2
PRIORITY_OF_SCHEMA = {"CommandAck": ACK, "WorkflowSignal": SIGNAL, "ExecutionRecord": SIGNAL, "Telemetry": TELEMETRY,
                      "RunCheckpoint": ACK}  # what another node resumes from: before the signals

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    priority INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_drain ON outbox (priority, seq);
CREATE TABLE IF NOT EXISTS outbox_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
INSERT = "INSERT INTO outbox (record_id, topic, key, value, priority, created_ms) VALUES (?, ?, ?, ?, ?, ?)"
#: Seconds a delivered row may wait to be deleted with the next write's transaction rather than in
#: its own: at 1 Hz telemetry every delete rides on the next second's insert, one SQLite commit
#: per record instead of two. A row delivered and not yet deleted when the process dies is sent
#: again after the restart, which consumers already deduplicate by record id.
FORGET_AFTER_S = 2.0
#: Seconds between the drain's turns while records are in flight: it collects their delivery
#: reports (``poll(0)``) at each turn and otherwise waits on its wake event, which a put sets, so a
#: record is handed over at once and only a report waits, for nothing but the row's deletion. It
#: does not block in the producer's poll, which no other thread can cut short: a put would wait
#: that long; and an idempotent acks=all delivery can take tens of ms on the embedded broker, so
#: polling in short steps turned the drain up to ~10 times per record.
REPORT_INTERVAL_S = 0.025
COUNTERS = ("written", "delivered", "downsampled", "refused", "expired", "delivery_errors")


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    record_id: str
    topic: str
    key: bytes | None
    value: bytes
    priority: int
    created_ms: int


class Outbox:
    """A durable, bounded, prioritised store-and-forward queue in front of a Kafka producer.

    Parameters
    ----------
    path
        The SQLite file (created if missing; a restart reopens it and drains what is left).
    producer_factory
        ``() -> confluent_kafka.Producer`` (built with `idempotent_producer_config`), or
        None (store only: tests and the write-cost benchmark).
    max_records, max_bytes
        Bounds on buffered records and on their bytes (keys and values; the file is a
        little larger); priorities decide what gives way (module docstring).
    max_age_s
        Records older than this expire, counted (Azure IoT Edge's default TTL is 2 h).
    drain_rate
        Records per second handed to the producer at most.
    max_in_flight
        Records handed to the producer and not yet acknowledged by the broker, at most.
    synchronous
        SQLite's ``synchronous`` pragma: NORMAL (crash-safe) or FULL (power-loss-safe).
    stall_s
        With records in flight and no delivery for this long, the producer is renewed
        (see `Outbox._renew_producer`).
    """

    def __init__(self, path, producer_factory=None, max_records: int = 1_000_000, max_bytes: int = 512 * 2**20,
                 max_age_s: float = 7200.0,
                 drain_rate: float = 5000.0, max_in_flight: int = 1000, synchronous: str = "NORMAL",
                 stall_s: float = 10.0, on_delivered=None):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.producer_factory, self.producer = producer_factory, None
        #: seconds without a delivery, records in flight, before the producer is renewed
        self.stall_s = stall_s
        self.renewals = 0
        self._generation = 0
        self._progress_at = time.monotonic()
        self._delivery_errors = 0
        self.max_records, self.max_bytes, self.max_age_s = max_records, max_bytes, max_age_s
        self.drain_rate, self.max_in_flight = drain_rate, max_in_flight
        #: called with the record id after every delivery the broker acknowledged (the link is up)
        self.on_delivered = on_delivered
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(SCHEMA)
        self._db.executemany("INSERT OR IGNORE INTO outbox_counters VALUES (?, 0)", [(c,) for c in COUNTERS])
        self._lock = threading.Lock()
        self._count, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(value) + COALESCE(length(key), 0)), 0) FROM outbox").fetchone()
        self._staged: list[tuple] = []     # put, not yet committed (group commit)
        self._refused = 0
        self._in_flight: dict[int, tuple[str, int]] = {}   # seq -> (record id, bytes), handed to the producer
        self._delivered: list[tuple[int, int]] = []   # (seq, bytes) the broker acknowledged, rows not yet deleted
        self._delivered_since = 0.0   # monotonic time of the oldest of them
        self._sent_upto: dict[int, int] = {}   # priority -> highest seq handed to the producer
        # Whether committed rows may wait that were never handed to the producer (or must be resent):
        # while records are in flight the drain loop turns every few ms, and without this each turn
        # would query the database for a batch it already knows is empty. Staged records are not
        # counted here: the drain commits them itself and hands them over without a query.
        self._unsent = True
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._expire_at = 0.0   # wall time of the next expiry check (0: at the first loop)
        self._thread: threading.Thread | None = None
        self.last_delivery_monotonic: float | None = None

    # -- writing ------------------------------------------------------------
    def put(self, topic: str, key: bytes | None, value: bytes, priority: int, record_id: str,
            wait: bool = False) -> bool:
        """Store one record; False when it was refused (outbox full of more urgent records).

        Records are committed in groups by the drain thread every few milliseconds
        (one transaction for many records: the per-record cost is an append);
        ``wait=True`` commits at once, before returning (acks of local decisions).
        """
        now_ms = int(time.time() * 1000)
        with self._lock:
            size = len(value) + len(key or b"")
            while self._count >= self.max_records or self._bytes + size > self.max_bytes:
                if self._delivered:  # rows the broker has acknowledged make room first
                    self._commit_staged(forget=True)
                    continue
                if size > self.max_bytes or not self._make_room(priority):
                    self._refused += 1
                    return False
            self._staged.append((record_id, topic, key, value, priority, now_ms))
            self._count += 1
            self._bytes += size
            if wait:
                self._commit_staged()
        self._wake.set()
        return True

    def _commit_staged(self, forget: bool = False, hand_over: bool = False) -> list[OutboxRow]:
        """Write the staged records in one transaction, deleting the delivered rows in it (caller holds the lock).

        With nothing staged there is no transaction unless ``forget`` (delete the delivered rows
        now). Returns the rows written; unless ``hand_over`` (the drain sends them itself, see
        `_next_batch`) they are left for the drain's query.
        """
        if not self._staged and not self._refused and not (forget and (self._delivered or self._delivery_errors)):
            return []
        staged, self._staged = self._staged, []
        done, self._delivered = self._delivered, []
        rows = []
        self._db.execute("BEGIN")
        for record in staged:  # one by one: each row's seq, for the drain to hand it over without a query
            rows.append(OutboxRow(self._db.execute(INSERT, record).lastrowid, *record))
        if done:  # not counted: `counters` derives the delivered count, one statement less per record
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in done])
        for name, n in (("refused", self._refused), ("delivery_errors", self._delivery_errors)):
            if n:
                self._bump(name, n)
        self._db.execute("COMMIT")
        self._refused = self._delivery_errors = 0
        self._count -= len(done)
        self._bytes -= sum(size for _, size in done)
        if rows and not hand_over:
            self._unsent = True
        return rows

    def commit(self) -> None:
        """Make every record put so far durable now."""
        with self._lock:
            self._commit_staged()

    def _forget_delivered(self) -> None:
        """Delete the rows the broker has acknowledged now, in a transaction of their own if need be."""
        with self._lock:
            self._commit_staged(forget=True)

    def _make_room(self, priority: int) -> bool:
        """Thin the lowest class below or at ``priority`` that can give way; True if room was made."""
        self._commit_staged()
        lowest = self._db.execute("SELECT MAX(priority) FROM outbox").fetchone()[0]
        if lowest is None or lowest < priority or lowest != TELEMETRY:
            return False
        # The older half of the buffered telemetry, every second row but the oldest: the
        # outage stays covered from its start, at a coarser resolution the longer it lasts.
        rows = self._db.execute(
            "SELECT seq, length(value) + COALESCE(length(key), 0) FROM outbox WHERE priority = ? ORDER BY seq", (lowest,)).fetchall()
        older = [r for r in rows[: max(2, len(rows) // 2)] if r[0] not in self._in_flight]
        victims = older[1::2] or older
        if not victims:
            return False
        self._db.execute("BEGIN")
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in victims])
        self._bump("downsampled", len(victims))
        self._db.execute("COMMIT")
        self._count -= len(victims)
        self._bytes -= sum(size for _, size in victims)
        return True

    def _bump(self, name: str, n: int) -> None:
        self._db.execute("UPDATE outbox_counters SET value = value + ? WHERE name = ?", (n, name))

    # -- reading ------------------------------------------------------------
    def pending(self) -> int:
        """Records stored and not yet acknowledged by the broker."""
        with self._lock:
            return self._count - len(self._delivered)

    def pending_bytes(self) -> int:
        """Bytes of keys and values stored and not yet acknowledged by the broker."""
        with self._lock:
            return self._bytes - sum(size for _, size in self._delivered)

    def counters(self) -> dict[str, int]:
        with self._lock:
            self._commit_staged(forget=True)
            counters = dict(self._db.execute("SELECT name, value FROM outbox_counters"))
            # Every record written took the next sequence number: SQLite keeps the highest.
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            stored = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        counters["written"] = row[0] if row else 0
        # A row leaves the table delivered, thinned or expired, and the last two are counted in the
        # transaction that deletes them: so the delivered count is what is neither, exactly, and the
        # commit that deletes a delivered row (one a record at 1 Hz) need not update a counter too.
        counters["delivered"] = counters["written"] - stored - counters["downsampled"] - counters["expired"]
        return counters

    def peek(self, n: int) -> list[OutboxRow]:
        """The next ``n`` committed records in drain order (priority, then order of writing)."""
        with self._lock:
            self._commit_staged(forget=True)
            rows = self._db.execute("SELECT seq, record_id, topic, key, value, priority, created_ms FROM outbox "
                                    "ORDER BY priority, seq LIMIT ?", (n,)).fetchall()
        return [OutboxRow(*r) for r in rows]

    # -- draining -----------------------------------------------------------
    def start(self) -> "Outbox":
        if self.producer_factory is None:
            raise ValueError("an outbox without a producer stores only")
        self.producer = self.producer_factory()
        self._thread = threading.Thread(target=self._drain_loop, name="outbox-drain", daemon=True)
        self._thread.start()
        return self

    def _drain_loop(self) -> None:
        """Send, collect delivery reports, expire; idle, it sleeps until a put or the next expiry.

        With records in flight it turns every `REPORT_INTERVAL_S` to collect their reports (or,
        in an outage, to run the stall check), and at once on a put; with nothing in
        flight and nothing to send it waits on ``_wake`` until the oldest row's expiry (or until
        delivered rows are due for deletion, when no write carried them), so an idle node's
        outbox wakes once per record written, not on a timer.
        """
        tokens, last = 0.0, time.monotonic()
        while not self._halt.is_set():
            now = time.monotonic()
            tokens = min(self.drain_rate, tokens + (now - last) * self.drain_rate)
            last = now
            self._wake.clear()  # before reading: a put from here on wakes the next wait
            room = min(int(tokens), self.max_in_flight - len(self._in_flight))
            sent = self._send(self._next_batch(room)) if room > 0 else 0
            tokens -= sent
            self.producer.poll(0)  # the delivery reports that have come
            if self._delivered and now - self._delivered_since >= FORGET_AFTER_S:
                self._forget_delivered()  # no write came to carry the deletes
            if self._in_flight and now - self._progress_at > self.stall_s:
                self._renew_producer()
            if time.time() >= self._expire_at:
                self._expire()
            if sent or self._in_flight:
                self._wake.wait(REPORT_INTERVAL_S)
                continue
            if room <= 0 and self._count:
                self._wake.wait(1.0 / self.drain_rate)  # rate-limited: until the bucket has a token
            else:
                until = self._expire_at - time.time()
                if self._delivered:
                    until = min(until, self._delivered_since + FORGET_AFTER_S - time.monotonic())
                self._wake.wait(max(0.0, until))

    def _renew_producer(self) -> None:
        """Start over with a fresh producer from the oldest undelivered record.

        A broker that lost its producer-id state (a restarted broker with memory
        storage; a cluster whose transaction log was reset) answers every retry of
        the old idempotent producer with UNKNOWN_PRODUCER_ID, and librdkafka bumps
        the epoch forever. The rows are still here: a new producer (a new id)
        sends them again in order; any that did arrive are deduplicated downstream.
        """
        old, self.producer = self.producer, self.producer_factory()
        self._generation += 1
        old.purge()
        old.poll(0)
        self._in_flight.clear()
        self._sent_upto.clear()
        self._unsent = True
        self._progress_at = time.monotonic()
        self.renewals += 1

    def _next_batch(self, n: int) -> list[OutboxRow]:
        """At most ``n`` rows to hand to the producer next, in drain order (priority, then order of writing).

        When every committed row has been handed over, the staged records this commits are the
        batch, without a query; otherwise (a backlog, a resend, rows another thread committed)
        each priority class is read from the database after the last row handed over.
        """
        with self._lock:
            if not self._unsent:
                rows = self._commit_staged(hand_over=True)
                if len(rows) <= n:
                    return sorted(rows, key=lambda row: (row.priority, row.seq))
                self._unsent = True  # more than there is room for: the query below takes them in order
            # Delivered rows deleted first: a resend reads from an older row on, and must not send them again.
            self._commit_staged(forget=True)
            rows = []
            for priority in (ACK, SIGNAL, TELEMETRY):
                if len(rows) >= n:
                    break
                after = self._sent_upto.get(priority, 0)
                rows += self._db.execute(
                    "SELECT seq, record_id, topic, key, value, priority, created_ms FROM outbox "
                    "WHERE priority = ? AND seq > ? ORDER BY seq LIMIT ?", (priority, after, n - len(rows))).fetchall()
            self._unsent = len(rows) >= n  # fewer than asked for: every row is handed over
        return [OutboxRow(*r) for r in rows]

    def _send(self, rows: list[OutboxRow]) -> int:
        if rows and not self._in_flight:
            self._progress_at = time.monotonic()
        for row in rows:
            self._in_flight[row.seq] = (row.record_id, len(row.value) + len(row.key or b""))
            self._sent_upto[row.priority] = row.seq
            self.producer.produce(row.topic, key=row.key, value=row.value,
                                  on_delivery=self._delivery_callback(row.seq, row.priority, self._generation))
        return len(rows)

    def _delivery_callback(self, seq: int, priority: int, generation: int):
        def done(err, _msg):
            if generation != self._generation:
                return  # a report of a producer that was renewed: its records are being resent
            record_id, size = self._in_flight.pop(seq, (None, 0))
            if err is None:
                with self._lock:  # another thread's commit may be taking the list
                    if not self._delivered:
                        self._delivered_since = time.monotonic()
                    self._delivered.append((seq, size))
                self._progress_at = self.last_delivery_monotonic = time.monotonic()
                if self.on_delivered is not None:
                    self.on_delivered(record_id)
                return
            # Not delivered (librdkafka gave up: a fatal error, or a topic that is gone):
            # resend from this record on, in order. A later record that did get through is
            # sent again and deduplicated downstream by its record id.
            with self._lock:
                self._delivery_errors += 1
                self._sent_upto[priority] = min(self._sent_upto.get(priority, 0), seq - 1)
                self._unsent = True
        return done

    def _expire(self) -> None:
        """Delete rows older than ``max_age_s`` (not in flight); set when the next one is due."""
        cutoff = int((time.time() - self.max_age_s) * 1000)
        with self._lock:
            self._commit_staged(forget=True)  # a delivered row is deleted as delivered, not counted as expired
            oldest = self._db.execute("SELECT MIN(created_ms) FROM outbox").fetchone()[0]
            if oldest is not None and oldest < cutoff:
                where = "created_ms < ? AND seq NOT IN (%s)" % ",".join(str(seq) for seq in self._in_flight or {-1})
                self._db.execute("BEGIN")
                gone, size = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(length(value) + COALESCE(length(key), 0)), 0) FROM outbox "
                    f"WHERE {where}", (cutoff,)).fetchone()
                self._db.execute(f"DELETE FROM outbox WHERE {where}", (cutoff,))
                self._bump("expired", gone)
                self._db.execute("COMMIT")
                self._count -= gone
                self._bytes -= size
                oldest = self._db.execute("SELECT MIN(created_ms) FROM outbox").fetchone()[0]
            # No row expires before the oldest one does, and a row put later is younger still; a
            # row kept because it was in flight is looked at again a second later.
            now = time.time()
            if oldest is None:
                self._expire_at = now + self.max_age_s
            else:
                self._expire_at = oldest / 1000 + self.max_age_s if oldest >= cutoff else now + 1.0

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every stored record is delivered (True) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            self._wake.set()
            time.sleep(0.02)
        return self.pending() == 0

    def close(self) -> None:
        """Stop draining; what is not delivered stays in the file for the next start."""
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.producer is not None:
            self.producer.poll(0)
            self._forget_delivered()
            self.producer.purge()  # what is not delivered stays in the file
            # Drop the client now (librdkafka destroys it with its last reference): kept until the
            # worker is collected, it went on reconnecting to a broker its owner had stopped.
            self.producer = None
        with self._lock:
            self._commit_staged(forget=True)
            self._db.close()


def idempotent_producer_config(settings, **extra) -> dict:
    """librdkafka settings for draining an outbox: idempotent, ordered, never timing out.

    ``message.timeout.ms=0`` makes librdkafka retry until the broker is back
    instead of failing a record after 5 minutes; the outbox row stays until the
    delivery report says it arrived. ``allow.auto.create.topics=false``: a node
    reconnecting to a broker that lost its topics must not recreate them with
    the broker's default partition count (measured on Tansu: 4 instead of the
    cluster's 2, and records keyed to partitions no consumer was assigned); it
    waits until the operator has created them.
    """
    return settings.producer(**{"enable.idempotence": "true", "acks": "all", "message.timeout.ms": "0",
                                "linger.ms": "0", "reconnect.backoff.max.ms": "1000",
                                "allow.auto.create.topics": "false", **extra})
