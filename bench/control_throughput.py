"""Telemetry events/s through the control flow (Kafka in -> commands out).

Pre-produces N telemetry records of a simulated fleet in a heat wave (so the
policy really decides and emits commands), then runs ``liquid flow run control
--until-end`` on 1 worker, 2 workers (threads) and 2 processes, each on its own
fresh copy of the input. A flow's rate is N / (its run time minus the same
flow's start-up and shut-down on an empty topic, measured in the same run).
The ceiling is the broker's own rate: a plain consumer reading the same N
records, measured in the same run.

    python bench/control_throughput.py [--events 200000] [--nodes 200]

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

from _bench import ROOT, emit_result
from confluent_kafka import Consumer, Producer, TopicPartition

from deploy.broker import EmbeddedBroker
from deploy.replay import read_topic
from deploy.topics import ensure_topics
from edge.fleet import SimulatedNode
from edge.thermal import Scenario
from schemas import TopicNames
from schemas.codec import Codec
from schemas.kafka import KafkaSettings, produce_waiting

PARTITIONS = 4


def encoded_fleet(events: int, nodes: int) -> list[tuple[bytes, bytes]]:
    codec = Codec()
    fleet = [SimulatedNode(f"edge-{i}", Scenario("heat-wave", duration_s=events / nodes), seed=i) for i in range(nodes)]
    out = []
    t0 = 1_700_000_000_000
    for k in range(events // nodes):
        for node in fleet:
            out.append((node.node_id.encode(), codec.encode("Telemetry", node.sample(t0 + k * 1000, 1.0))))
    return out


def produce(settings: KafkaSettings, topic: str, messages) -> float:
    producer = Producer(settings.producer(**{"linger.ms": "5", "batch.num.messages": "10000"}))
    start = time.perf_counter()
    for key, value in messages:
        produce_waiting(producer, topic, key, value, wait_s=0.01)
    producer.flush(60)
    return len(messages) / (time.perf_counter() - start)


def consume_rate(settings: KafkaSettings, topic: str, expected: int) -> float:
    consumer = Consumer(settings.consumer("bench", **{"fetch.wait.max.ms": "5"}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    n, start = 0, time.perf_counter()
    while n < expected and time.perf_counter() - start < 120:
        n += sum(1 for m in consumer.consume(10000, timeout=0.5) if m.error() is None)
    rate = n / (time.perf_counter() - start)
    consumer.close()
    return rate


def run_flow(bootstrap: str, *args: str, flow: str = "control") -> float:
    """Wall time of ``liquid flow run FLOW --until-end`` with ``args``."""
    cmd = [sys.executable, "-m", "deploy.cli", "flow", "run", flow, "--until-end", "--bootstrap", bootstrap,
           "--batch-size", "1000", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return elapsed


def children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def flow_rate(messages, *args: str, startup_s: float | None = None, ceiling: bool = False,
              flow: str = "control", topic: str | None = None) -> dict:
    """Run a flow over ``messages`` on a fresh broker: events/s net of start-up, what it emitted.

    With ``startup_s=None`` the start-up cost is measured first, on an empty topic.
    Beside the wall-clock rate, ``events_per_cpu_s`` divides by the flow process's
    own CPU time (net of its start-up's): on a machine shared with other work it
    moves far less than the wall-clock rate, which also counts the time the flow
    waited for a core.
    """
    out = {}
    startup_cpu_s = None
    if startup_s is None:
        with EmbeddedBroker() as broker:
            ensure_topics(KafkaSettings(broker.bootstrap), TopicNames().all(), partitions=PARTITIONS)
            cpu0 = children_cpu_s()
            startup_s = run_flow(broker.bootstrap, *args, flow=flow)
            startup_cpu_s = children_cpu_s() - cpu0
    out["startup_s"] = startup_s
    with EmbeddedBroker() as broker:
        settings, topics = KafkaSettings(broker.bootstrap), TopicNames()
        ensure_topics(settings, topics.all(), partitions=PARTITIONS)
        topic = topic or topics.telemetry
        out["produce_per_s"] = produce(settings, topic, messages)
        if ceiling:
            out["consume_per_s"] = consume_rate(settings, topic, len(messages))
        cpu0 = children_cpu_s()
        elapsed = run_flow(broker.bootstrap, *args, flow=flow)
        cpu_s = children_cpu_s() - cpu0
        out["elapsed_s"] = elapsed
        out["events_per_s"] = len(messages) / max(elapsed - startup_s, 1e-3)
        out["cpu_s"] = cpu_s
        if startup_cpu_s is not None:
            out["startup_cpu_s"] = startup_cpu_s
            out["events_per_cpu_s"] = len(messages) / max(cpu_s - startup_cpu_s, 1e-3)
        out["commands"] = sum(1 for r in read_topic(settings, topics.commands) if r.get("_schema") == "MorphCommand")
        out["alerts"] = sum(1 for r in read_topic(settings, topics.alerts) if r.get("_schema") == "Alert")
        out["predictions"] = sum(1 for r in read_topic(settings, topics.predictions)
                                 if r.get("_schema") == "NextStepPrediction")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--nodes", type=int, default=200)
    args = ap.parse_args()
    messages = encoded_fleet(args.events, args.nodes)
    n = len(messages)
    results = {"events": n, "nodes": args.nodes}
    configs = {"1_worker": ["-w", "1"], "2_workers": ["-w", "2"], "2_processes": ["-p", "2"]}
    for name, scale in configs.items():
        r = flow_rate(messages, *scale, ceiling=name == "1_worker")
        if name == "1_worker":
            results["flow_startup_s"] = round(r["startup_s"], 3)
            results["broker_produce_events_per_s"] = round(r["produce_per_s"])
            results["broker_ceiling_events_per_s"] = round(r["consume_per_s"])
        results[f"events_per_s_{name}"] = round(r["events_per_s"])
        results[f"commands_{name}"] = r["commands"]
        print(f"{name:>12}: {n} events in {r['elapsed_s']:.2f} s ({r['startup_s']:.2f} s of it start-up and "
              f"shut-down, measured on an empty topic with the same options) = {r['events_per_s']:,.0f} events/s; {r['commands']} commands",
              flush=True)
    ceiling = results["broker_ceiling_events_per_s"]
    print(f"broker ceiling (plain consumer): {ceiling:,} events/s; produce {results['broker_produce_events_per_s']:,}/s")
    for name in configs:
        print(f"ratio {name} / broker ceiling: {results[f'events_per_s_{name}'] / ceiling:.3f}")
    results["ratio_1_worker_to_ceiling"] = round(results["events_per_s_1_worker"] / ceiling, 4)
    results["target_events_per_s_1_worker"] = 50_000
    emit_result(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
