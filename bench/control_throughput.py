"""Telemetry events/s through the control flow (Kafka in -> commands out).

Pre-produces N telemetry records of a simulated fleet in a heat wave (so the
policy really decides and emits commands), then runs ``liquid flow run control
--until-end`` on 1 worker, 2 workers (threads) and 2 processes, each on its own
fresh copy of the input. A flow's rate is N / (its run time minus the same
flow's start-up and shut-down on an empty topic, measured in the same run).
The ceiling is the broker's own rate: a plain consumer reading the same N
records, measured in the same run.

    python bench/control_throughput.py [--events 200000] [--nodes 200]
    python bench/control_throughput.py --step     # the per-node step alone: CPU µs per event
    python bench/control_throughput.py --compare --zoo .cache/zoo   # the agent against the rules

``--step`` measures what the flows' rates depend on without a broker: the
control step's CPU time per event for the rules, the rules with the online
models and the learned agent (one thread, best of three), a figure that moves
little with the machine's load.

``--compare`` measures the learned agent (``--policy rli``, peers and DP on,
as the flow runs it by default) against the rules through the broker: both on
the same heterogeneous fleet (``edge.heterogeneous``, as bench/rli.py's flow
rate; default 100 nodes × 1,000 s), on 1 worker, alternating, each keeping its
best of ``--repeats``; the ratio agent / rules, wall clock and per CPU second,
and what each emitted (commands, experience releases).

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


def encoded_hetero_fleet(seconds: int, nodes: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Telemetry of a heterogeneous fleet (`edge.heterogeneous`, seed ``seed``), one sample per node and second,
    encoded: what the agent learns on in bench/rli.py, open loop (the nodes keep their first arm)."""
    from edge.heterogeneous import open_loop_telemetry

    codec = Codec()
    return [(sample["node_id"].encode(), codec.encode("Telemetry", sample))
            for sample in open_loop_telemetry(seed, nodes, seconds)]


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
              flow: str = "control", topic: str | None = None, startup_cpu_s: float | None = None) -> dict:
    """Run a flow over ``messages`` on a fresh broker: events/s net of start-up, what it emitted.

    With ``startup_s=None`` the start-up cost is measured first, on an empty topic (a later run of the
    same flow can pass the ``startup_s`` and ``startup_cpu_s`` measured then).
    Beside the wall-clock rate, ``events_per_cpu_s`` divides by the flow process's
    own CPU time (net of its start-up's): on a machine shared with other work it
    moves far less than the wall-clock rate, which also counts the time the flow
    waited for a core.
    """
    out = {}
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
        out["experience"] = sum(1 for r in read_topic(settings, topics.experience) if r.get("_schema") == "Experience")
    return out


def step_costs(events: int, nodes: int, repeats: int = 3) -> dict:
    """CPU µs per event of the control flow's per-node step alone (`operators.control.MorphStep`, no
    Bytewax, no Kafka), best of ``repeats``: the rules, the rules with the online models (the fleet in
    a heat wave), and the learned agent with peers and DP (50 heterogeneous nodes over 400 s, as
    bench/rli.py measures the flow). One thread, CPU time: a figure to compare across machines and loads."""
    from edge.heterogeneous import open_loop_telemetry
    from flows.spec import FlowSpec
    from operators.control import MorphStep, single_threaded_blas
    from operators.events import Event
    from operators.from_spec import agent_for, models_factory_for, policy_for, sharer_factory_for

    single_threaded_blas()
    codec = Codec()
    heat = [codec.decode(value).record for _, value in encoded_fleet(events, nodes)]
    hetero = open_loop_telemetry(0, 50, 400)
    paths = {"rules": ({}, False, heat), "rules_models": ({}, True, heat), "agent": ({"policy_kind": "rli"}, False, hetero)}
    out = {}
    for name, (options, models, records) in paths.items():
        spec = FlowSpec("control", bootstrap="unused:9092", deterministic=True, models=models, options=options)
        best = float("inf")
        for _ in range(repeats):
            step = MorphStep(policy_for(spec), models_factory_for(spec), stamp_wall_clock=False,
                             agent=agent_for(spec), sharer_factory=sharer_factory_for(spec))
            states, start = {}, time.process_time()
            for record in records:
                key = record["node_id"]
                states[key], _ = step(states.get(key), Event("Telemetry", record, "bench", 0, -1))
            best = min(best, (time.process_time() - start) / len(records) * 1e6)
        out[f"step_us_per_event_{name}"] = round(best, 2)
        print(f"{name:>13}: {best:.2f} µs per event (CPU time, best of {repeats}, {len(records)} events)", flush=True)
    rules = out["step_us_per_event_rules"]
    out["step_cost_vs_rules_models"] = round(out["step_us_per_event_rules_models"] / rules, 3)
    out["step_cost_vs_rules_agent"] = round(out["step_us_per_event_agent"] / rules, 3)
    print(f"cost against the rules' step in the same run: with the models x{out['step_cost_vs_rules_models']:.2f}, "
          f"the agent x{out['step_cost_vs_rules_agent']:.2f} (a flow adds its own per-event cost to each)")
    return out


def compare(seconds: int, nodes: int, zoo: str | None, repeats: int) -> dict:
    """The agent (``--policy rli``) against the rules through the broker, on the same heterogeneous fleet, 1 worker.

    The two alternate, ``repeats`` times each, and each keeps its best run (so a burst of other work on a
    shared machine does not land on one only); each one's start-up is measured once, on an empty topic,
    in its first run. Both rates are net of start-up, wall clock and per CPU second of the flow process."""
    messages = encoded_hetero_fleet(seconds, nodes)
    n = len(messages)
    policies = {"rules": [], "rli": ["--policy", "rli", *(["--zoo", zoo] if zoo else [])]}
    best, startup = {}, {}
    for _ in range(repeats):
        for name, options in policies.items():
            r = flow_rate(messages, "-w", "1", *options, **startup.get(name, {}))
            startup.setdefault(name, {"startup_s": r["startup_s"], "startup_cpu_s": r["startup_cpu_s"]})
            print(f"{name:>5}: {n} events in {r['elapsed_s']:.2f} s ({r['startup_s']:.2f} s start-up and shut-down) = "
                  f"{r['events_per_s']:,.0f} events/s, {r['events_per_cpu_s']:,.0f} per CPU second; "
                  f"{r['commands']} commands, {r['experience']} experience releases", flush=True)
            b = best.setdefault(name, {"events_per_s": 0.0, "events_per_cpu_s": 0.0})
            b["events_per_s"] = max(b["events_per_s"], r["events_per_s"])
            b["events_per_cpu_s"] = max(b["events_per_cpu_s"], r["events_per_cpu_s"])
            b["commands"], b["experience"] = r["commands"], r["experience"]
    out = {"events": n, "nodes": nodes, "seconds": seconds, "repeats": repeats}
    for name, b in best.items():
        out.update({f"{name}_events_per_s": round(b["events_per_s"]),
                    f"{name}_events_per_cpu_s": round(b["events_per_cpu_s"]), f"{name}_commands": b["commands"],
                    f"{name}_experience": b["experience"],
                    f"{name}_startup_s": round(startup[name]["startup_s"], 3)})
    out["ratio_rli_to_rules"] = round(best["rli"]["events_per_s"] / best["rules"]["events_per_s"], 4)
    out["ratio_rli_to_rules_per_cpu_s"] = round(best["rli"]["events_per_cpu_s"] / best["rules"]["events_per_cpu_s"], 4)
    print(f"agent / rules through the broker (best of {repeats} each): {out['ratio_rli_to_rules']:.3f} wall clock, "
          f"{out['ratio_rli_to_rules_per_cpu_s']:.3f} per CPU second")
    out["target_ratio"] = 0.5
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--step", action="store_true",
                    help="only the per-node step's CPU cost per event (rules, with the models, the agent): "
                         "no broker, one thread, steady under load")
    ap.add_argument("--compare", action="store_true",
                    help="the learned agent (--policy rli) against the rules through the broker, on the same "
                         "heterogeneous fleet (--nodes, default 100 here, × --seconds): the ratio of their rates")
    ap.add_argument("--seconds", type=int, default=1000, help="--compare: seconds of telemetry per node (default 1000)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="--compare: runs of each, alternating, best kept (default 2)")
    ap.add_argument("--zoo", help="--compare: model zoo directory the agent's arms come from (default: the project's)")
    args = ap.parse_args()
    if args.compare:
        nodes = 100 if args.nodes == ap.get_default("nodes") else args.nodes
        emit_result(compare(args.seconds, nodes, args.zoo, args.repeats))
        return 0
    if args.step:
        emit_result(step_costs(min(args.events, 40_000), args.nodes))
        return 0
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
