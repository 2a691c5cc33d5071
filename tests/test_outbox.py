"""The durable outbox: bounds and priorities, restart survival, and the drain through a real broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from edge.outbox import ACK, SIGNAL, TELEMETRY, Outbox, idempotent_producer_config


def test_full_outbox_thins_telemetry_keeps_acks_and_signals_and_counts(tmp_path):
    box = Outbox(tmp_path / "o.db", max_records=100)
    for i in range(100):
        assert box.put("edge.telemetry", b"n1", b"t", TELEMETRY, f"t{i}")
    for i in range(30):  # acks and signals arrive while full: telemetry gives way, they do not
        assert box.put("edge.acks", b"n1", b"a", ACK, f"a{i}")
        assert box.put("workflow.signals", b"w", b"s", SIGNAL, f"s{i}")
    counters = box.counters()
    rows = box.peek(1000)
    ids = [r.record_id for r in rows]
    assert box.pending() == len(rows) <= 100
    assert [i for i in ids if i[0] == "a"] == [f"a{i}" for i in range(30)]       # every ack, in order
    assert [i for i in ids if i[0] == "s"] == [f"s{i}" for i in range(30)]       # every signal, in order
    telemetry = [int(i[1:]) for i in ids if i[0] == "t"]
    assert telemetry == sorted(telemetry) and telemetry[-1] == 99                 # order kept, newest kept
    # Thinned, not truncated: the kept telemetry still spans the whole period.
    assert telemetry[0] < 10
    assert counters["downsampled"] == 100 - len(telemetry) > 0
    assert counters["refused"] == 0
    assert ids[:30] == [f"a{i}" for i in range(30)]                               # acks drain first


def test_outbox_full_of_acks_refuses_and_counts(tmp_path):
    box = Outbox(tmp_path / "o.db", max_records=10)
    for i in range(10):
        box.put("edge.acks", b"n1", b"a", ACK, f"a{i}")
    assert not box.put("edge.telemetry", b"n1", b"t", TELEMETRY, "t0")
    assert not box.put("edge.acks", b"n1", b"a", ACK, "a10")
    assert box.counters()["refused"] == 2 and box.pending() == 10


def test_records_survive_a_restart_and_old_ones_expire(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for i in range(5):
        box.put("edge.telemetry", b"n1", b"v%d" % i, TELEMETRY, f"t{i}")
    box.close()  # a worker stopping with nothing delivered
    again = Outbox(tmp_path / "o.db")
    assert again.pending() == 5 and [r.value for r in again.peek(10)] == [b"v%d" % i for i in range(5)]
    assert again.counters()["written"] == 5
    again.max_age_s = 0.0
    time.sleep(0.01)
    again._expire()
    assert again.pending() == 0 and again.counters()["expired"] == 5


@pytest.mark.broker
def test_drain_through_the_broker_in_order_per_key_at_a_bounded_rate(kafka, tmp_path):
    from confluent_kafka import Consumer, TopicPartition

    box = Outbox(tmp_path / "o.db", lambda: Producer(idempotent_producer_config(kafka)), drain_rate=2000)
    n = 3000
    for i in range(n):  # written before draining starts: a backlog, as after an outage
        box.put("edge.telemetry", b"n%d" % (i % 3), b"%d" % i, TELEMETRY, f"r{i}")
    t0 = time.monotonic()
    box.start()
    assert box.flush(30)
    elapsed = time.monotonic() - t0
    box.close()
    assert elapsed >= (n - 2000) / 2000 * 0.9  # the token bucket held the rate (one second's burst allowed)
    consumer = Consumer(kafka.consumer("t"))
    consumer.assign([TopicPartition("edge.telemetry", p, 0) for p in range(2)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got += [(m.key(), int(m.value())) for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
    consumer.close()
    assert len(got) == n
    for key in {k for k, _ in got}:
        values = [v for k, v in got if k == key]
        assert values == sorted(values)  # in order per key


def test_bounded_by_bytes_too_and_the_count_of_bytes_survives_a_restart(tmp_path):
    box = Outbox(tmp_path / "o.db", max_bytes=10_000)
    for i in range(200):  # 100 bytes each: twice the bound
        assert box.put("edge.telemetry", b"n1", b"x" * 98, TELEMETRY, f"t{i}")
    assert box.pending_bytes() <= 10_000 and box.pending() * 100 == box.pending_bytes()
    assert box.counters()["downsampled"] == 200 - box.pending()
    assert box.put("edge.acks", b"n1", b"a" * 2_000, ACK, "a0")      # a big ack: telemetry gives way
    kept = box.pending_bytes()
    assert kept <= 10_000
    box.close()
    again = Outbox(tmp_path / "o.db", max_bytes=10_000)
    assert again.pending_bytes() == kept
    assert not again.put("edge.acks", b"n1", b"a" * 20_000, ACK, "a1")   # larger than the whole bound...
    assert again.counters()["refused"] == 1 and again.pending_bytes() == kept   # ...and nothing thinned for it


@pytest.mark.broker
def test_records_put_while_draining_are_delivered_once_and_none_is_left_after_close(kafka, tmp_path):
    """The live path: each record committed and handed over by the drain itself, its row deleted with a
    later write or at close, so a restart finds nothing to send again."""
    from confluent_kafka import Consumer, TopicPartition

    box = Outbox(tmp_path / "o.db", lambda: Producer(idempotent_producer_config(kafka))).start()
    n = 30
    for i in range(n):
        urgent = i % 5 == 0
        box.put("edge.acks" if urgent else "edge.telemetry", b"n1", b"%d" % i, ACK if urgent else TELEMETRY, f"r{i}")
        time.sleep(0.01)
    assert box.flush(20) and box.pending() == 0 and box.pending_bytes() == 0
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert again.pending() == 0 and again.counters()["delivered"] == n
    again.close()
    consumer = Consumer(kafka.consumer("t"))
    consumer.assign([TopicPartition(topic, p, 0) for topic in ("edge.acks", "edge.telemetry") for p in range(2)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got += [int(m.value()) for m in consumer.consume(100, timeout=0.5) if m.error() is None]
    consumer.close()
    assert sorted(got) == list(range(n))  # every record once


@pytest.mark.broker
def test_delivered_thinned_and_expired_add_up_to_what_was_written_across_a_restart(kafka, tmp_path):
    box = Outbox(tmp_path / "o.db", max_records=10)
    for i in range(25):  # thinned while no producer drains
        box.put("edge.telemetry", b"n1", b"%d" % i, TELEMETRY, f"t{i}")
    thinned = box.counters()["downsampled"]
    box.close()
    again = Outbox(tmp_path / "o.db", lambda: Producer(idempotent_producer_config(kafka)), max_records=10).start()
    again.put("edge.acks", b"n1", b"a", ACK, "a0")
    assert again.flush(20)
    again.close()
    counters = Outbox(tmp_path / "o.db").counters()
    assert thinned > 0 and counters["written"] == 26 and counters["downsampled"] == thinned
    assert counters["delivered"] == 26 - thinned and counters["expired"] == 0
    old = Outbox(tmp_path / "old.db", max_age_s=0.0)  # every row expires at the first look
    old.put("edge.telemetry", b"n1", b"x", TELEMETRY, "x0")
    time.sleep(0.01)
    old._expire()
    assert old.counters()["expired"] == 1 and old.counters()["delivered"] == 0
    old.close()
