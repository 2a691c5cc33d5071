"""The embedded broker alone at the scale bench's record rate and size: is it the ceiling?

No flows: one producer streams records of --size bytes at --rate per second
(keys spread over the partitions, as nodes and workflows are), and one consumer
per partition reads them back the way a Bytewax source does (assign(), a poll
every millisecond, this project's consumer settings). Every --report seconds it
prints the broker's CPU share, the consumers' delivery latency (record
CreateTime to consume) p50/p99, and from librdkafka's statistics
(statistics.interval.ms) the produce and fetch requests per second that reached
the broker and their mean round trip; so the broker's CPU per request is measured
as the run goes on and the topic grows.

The baseline is the first window of the same run: the figures that matter are
the last window against the first (does the broker's cost per request grow with
what it stores?) and the broker's CPU share against a core. Each window also
says how many record batches a partition holds by then (produce requests so far
per partition: exact with one partition, where each request carries one batch),
and the run fits the broker's CPU per request to it (least squares over the
windows): the cost of one more stored batch on every request, which says when
a given request rate saturates a core.

    python bench/broker.py [--rate 2200] [--size 200] [--seconds 60] [--partitions 4]
           [-X fetch.wait.max.ms=5 ...] [--bootstrap HOST:PORT --broker-pid PID]

--bootstrap runs the same against another Kafka-compatible broker already
running on this machine (--broker-pid says which process's CPU to read). Each
run writes a topic of its own (bench.broker.<pid>), so the stored-batch count
holds there too; the broker's CPU is all of its work, so it should be otherwise idle.

--rate 2200 is the scale bench at 1,000 nodes / 5,000 workflows: 1,000
telemetry samples and ~1,170 workflow signals per second; --size 200 is above
their encoded sizes (117 bytes a sample, 83-90 a signal), so the figures err on
the broker's side. The producer takes the project's producer settings
(schemas.kafka: linger.ms 2) unless -X says otherwise; bench/scale.py's load
generator uses -X linger.ms=20. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from _bench import add_broker_options, broker_for, emit_result, progress

from deploy.kafka import parse_setting
from deploy.topics import ensure_topics
from schemas.kafka import KafkaSettings


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RequestCounter:
    """librdkafka's per-broker request counts (``brokers.*.req``) and round trips, from its statistics callback."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.rtt_us: list[float] = []

    def __call__(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        with self.lock:
            for name, broker in stats.get("brokers", {}).items():
                if broker.get("nodeid", -1) < 0:  # the bootstrap connection, not a broker
                    continue
                for kind, n in broker.get("req", {}).items():
                    self.requests[f"{name}/{kind}"] = n  # cumulative per connection
                if broker.get("rtt", {}).get("cnt"):
                    self.rtt_us.append(broker["rtt"]["avg"])

    def totals(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for key, n in self.requests.items():
                kind = key.rsplit("/", 1)[1]
                out[kind] = out.get(kind, 0) + n
            return out

    def take_rtt(self) -> list[float]:
        with self.lock:
            rtt, self.rtt_us = self.rtt_us, []
            return rtt


def produce(settings: KafkaSettings, topic: str, rate: float, size: int, seconds: float, keys: int,
            stats: RequestCounter, stop: threading.Event) -> int:
    """Records of ``size`` bytes at ``rate``/s, paced per millisecond; returns how many were produced."""
    from confluent_kafka import Producer

    from schemas.kafka import produce_waiting

    producer = Producer(settings.producer(**{"statistics.interval.ms": "1000", "stats_cb": stats}))
    payload = os.urandom(size)
    wall0, sent = time.monotonic(), 0
    total = int(rate * seconds)
    while sent < total and not stop.is_set():
        due = int((time.monotonic() - wall0) * rate)
        for _ in range(max(0, min(due, total) - sent)):
            produce_waiting(producer, topic, f"k-{sent % keys}".encode(), payload)
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)
    return sent


def consume(settings: KafkaSettings, topic: str, partition: int, stats: RequestCounter, stop: threading.Event,
            latencies: list, lock: threading.Lock) -> None:
    """One partition, read as a Bytewax source partition reads it: assign, consume(batch, 1 ms) in a loop."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.consumer("bench-broker", **{"statistics.interval.ms": "1000", "stats_cb": stats}))
    consumer.assign([TopicPartition(topic, partition, 0)])
    try:
        while not stop.is_set():
            msgs = consumer.consume(1000, 0.001)
            now_ms = time.time() * 1000
            got = [now_ms - m.timestamp()[1] for m in msgs if m.error() is None]
            if got:
                with lock:
                    latencies.extend(got)
    finally:
        consumer.close()


def _quantile(values: list, q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def cost_per_stored_batch(windows: list[dict]) -> dict:
    """Least-squares line of the broker's CPU per request against the batches a partition holds."""
    points = [(w["stored_batches_per_partition"], w["broker_us_per_request"]) for w in windows]
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return {"us_per_request_at_empty": None, "us_per_request_per_1000_stored_batches": None}
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return {"us_per_request_at_empty": round(intercept, 1), "us_per_request_per_1000_stored_batches": round(slope * 1000, 1)}


def run(args) -> dict:
    topic = f"bench.broker.{os.getpid()}"  # a topic of its own on an external broker too
    with broker_for(args) as broker:
        settings = KafkaSettings(broker.bootstrap, dict(args.kafka_settings))
        ensure_topics(settings, [topic], partitions=args.partitions)
        stop, done = threading.Event(), threading.Event()
        stats, lock, latencies = RequestCounter(), threading.Lock(), []
        consumers = [threading.Thread(target=consume, args=(settings, topic, p, stats, stop, latencies, lock),
                                      daemon=True) for p in range(args.partitions)]
        for c in consumers:
            c.start()
        time.sleep(2.0)  # consumers connected and fetching: the idle broker is the first measurement
        idle_cpu0, idle_t0, idle_req0 = cpu_seconds(broker.pid), time.monotonic(), stats.totals()
        time.sleep(args.report)
        idle_s = time.monotonic() - idle_t0
        idle_share = (cpu_seconds(broker.pid) - idle_cpu0) / idle_s
        idle_fetch = (stats.totals().get("Fetch", 0) - idle_req0.get("Fetch", 0)) / idle_s
        sent = {}
        producer = threading.Thread(target=lambda: (sent.update(n=produce(settings, topic, args.rate, args.size,
                                                                          args.seconds, args.keys, stats, stop)),
                                                    done.set()), daemon=True)
        windows = []
        cpu0, t0, req0 = cpu_seconds(broker.pid), time.monotonic(), stats.totals()
        start, produce0 = t0, req0.get("Produce", 0)
        producer.start()
        while not done.wait(args.report):
            cpu1, t1, req1 = cpu_seconds(broker.pid), time.monotonic(), stats.totals()
            with lock:
                lat, latencies[:] = list(latencies), []
            dt = t1 - t0
            reqs = {k: (req1.get(k, 0) - req0.get(k, 0)) / dt for k in ("Produce", "Fetch")}
            total_rps = sum(reqs.values())
            rtt = stats.take_rtt()
            window = {"t_s": round(t1 - start, 1), "broker_cpu_share": round((cpu1 - cpu0) / dt, 3),
                      "delivered_per_s": round(len(lat) / dt), "produce_req_per_s": round(reqs["Produce"]),
                      "fetch_req_per_s": round(reqs["Fetch"]),
                      "stored_batches_per_partition": round((req1.get("Produce", 0) - produce0) / args.partitions),
                      "broker_us_per_request": round((cpu1 - cpu0) / max(1.0, total_rps * dt) * 1e6, 1),
                      "rtt_ms_mean": round(statistics.fmean(rtt) / 1000, 2) if rtt else None,
                      "latency_ms_p50": _quantile(lat, 0.5), "latency_ms_p99": _quantile(lat, 0.99)}
            windows.append(window)
            progress(" ".join(f"{k}={v}" for k, v in window.items()))
            cpu0, t0, req0 = cpu1, t1, req1
        time.sleep(1.0)
        stop.set()
        for c in consumers:
            c.join(timeout=5)
    return {"broker": args.bootstrap or "embedded", "rate": args.rate, "size": args.size, "partitions": args.partitions, "seconds": args.seconds,
            **cost_per_stored_batch(windows),
            "kafka_settings": dict(args.kafka_settings), "produced": sent.get("n", 0),
            "broker_idle_cpu_share": round(idle_share, 3), "idle_fetch_req_per_s": round(idle_fetch),
            "windows": windows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2200.0, help="records per second (default %(default)s)")
    ap.add_argument("--size", type=int, default=200, help="bytes per record (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of production (default %(default)s)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions, one consumer each (default %(default)s)")
    ap.add_argument("--keys", type=int, default=6000, help="distinct keys (default %(default)s)")
    ap.add_argument("--report", type=float, default=10.0, help="seconds per reported window (default %(default)s)")
    ap.add_argument("-X", dest="kafka_settings", metavar="KEY=VALUE", action="append", type=parse_setting,
                    default=[], help="a librdkafka setting for the producer and consumers (repeatable)")
    add_broker_options(ap)
    args = ap.parse_args()
    if args.bootstrap and args.broker_pid is None:
        ap.error("--bootstrap needs --broker-pid: this benchmark measures the broker's CPU")
    result = run(args)
    first, last = result["windows"][0], result["windows"][-1]
    ratio = (round(last["broker_us_per_request"] / first["broker_us_per_request"], 2)
             if first["broker_us_per_request"] else None)
    print(f"broker CPU share: idle {result['broker_idle_cpu_share']}, first window {first['broker_cpu_share']}, "
          f"last {last['broker_cpu_share']}; CPU per request first {first['broker_us_per_request']} us, last "
          f"{last['broker_us_per_request']} us (x{ratio}); delivery p99 first {first['latency_ms_p99']} ms, last "
          f"{last['latency_ms_p99']} ms; fit: {result['us_per_request_at_empty']} us per request + "
          f"{result['us_per_request_per_1000_stored_batches']} us per 1,000 batches a partition holds")
    emit_result({**result, "us_per_request_last_over_first": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
