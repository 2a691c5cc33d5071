"""Adaptation latency and serving continuity, over many threshold crossings in one run.

Six edge-worker nodes serve real ONNX models under repeated hot spells (the
"cycles" scenario: 9 spells each, so >= 50 upward crossings of 85 °C), at 10x
scenario speed with the control flow's policy clock scaled to match. Measured:

* decision -> applied: event time of the telemetry sample the policy decided on
  -> the worker's ack (sent when the new session is serving), wall-clock ms;
* reaction: first sample over the threshold -> applied, in scenario seconds (the
  hysteresis window, by design, plus the decision-to-applied latency);
* requests dropped, and throughput retained in seconds that contain a swap;
* each variant's accuracy as a fraction of the transformer's, the
  transformer's batch-1 latency as a multiple of the snn's, and whether cost
  falls strictly down the ladder at each precision (zoo manifest: the full
  zoo, built first if missing).

Baseline, same run: the broker's own produce -> consume round trip (what a
message costs to cross Kafka once, with the same low-latency consumer settings).

    python bench/adaptation.py [--nodes 6] [--speed 10]

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _bench import ROOT, emit_result, progress

from deploy.broker import EmbeddedBroker
from deploy.demo import Monitor
from deploy.topics import ensure_topics
from edge.thermal import Scenario
from edge.worker import EdgeWorker
from morph.policy import PolicyConfig
from morph.zoo import build_zoo, load_manifest
from schemas import TopicNames
from schemas.kafka import KafkaSettings


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def broker_round_trip_ms(settings: KafkaSettings, n: int = 200) -> float:
    from confluent_kafka import Consumer, Producer, TopicPartition

    ensure_topics(settings, ["bench.ping"], partitions=1)
    producer = Producer(settings.producer(**{"linger.ms": "0"}))
    consumer = Consumer(settings.consumer("bench-ping"))
    consumer.assign([TopicPartition("bench.ping", 0, 0)])
    consumer.consume(1, timeout=1.0)
    rtts = []
    for i in range(n):
        t0 = time.perf_counter()
        producer.produce("bench.ping", value=str(i).encode())
        producer.flush()
        while True:  # poll(): returns on the first message (consume(n, t) waits for n or t)
            m = consumer.poll(1.0)
            if m is not None and m.error() is None and m.value() == str(i).encode():
                break
        rtts.append((time.perf_counter() - t0) * 1000)
    consumer.close()
    return statistics.median(rtts)


def run_fleet(args, zoo, policy: PolicyConfig, nodes: list[str]):
    """The control flow and one worker serving ``nodes`` through the hot spells: what the monitor saw,
    each node's per-second history and load start, the load stats, and the broker's round trip."""
    duration = 80.0 * args.cycles
    with EmbeddedBroker() as broker:
        settings, topics = KafkaSettings(broker.bootstrap), TopicNames()
        ensure_topics(settings, topics.all(), partitions=2)
        rtt = broker_round_trip_ms(settings)
        print(f"broker produce -> consume round trip: median {rtt:.2f} ms", flush=True)
        flow = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "flow", "run", "control", "--bootstrap", broker.bootstrap,
             "--zoo", str(zoo.root), "--start", "end",
             *[a for k in ("cooldown_s", "recover_cooldown_s", "pending_timeout_s")
               for a in ("--policy", f"{k}={getattr(policy, k)}")]],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        monitor = Monitor(settings, topics).start()
        time.sleep(2.0)
        scenarios = {n: Scenario("cycles", duration, cycles=args.cycles) for n in nodes}
        worker = EdgeWorker(settings, topics, nodes, Scenario("cycles", duration, cycles=args.cycles), zoo_dir=zoo.root,
                            sensor="thermal", rate=args.rate, interval_s=1.0 / args.speed, time_scale=args.speed,
                            scenarios=scenarios).start()
        wall = duration / args.speed
        print(f"{args.nodes} nodes x {args.cycles} hot spells, {wall:.0f} s at x{args.speed:g}", flush=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < wall:
            time.sleep(5)
            progress(f"  {time.monotonic() - t0:5.0f} s: {len(monitor.commands)} commands, {len(monitor.acks)} acks")
        histories = {n: node.load.history() for n, node in worker.nodes.items()}
        start_mono = {n: node.load._t0 for n, node in worker.nodes.items()}
        stats = worker.stop()
        time.sleep(0.5)
        monitor.stop()
        flow.terminate()
        flow.wait(10)
    return monitor, histories, start_mono, stats, rtt


def adaptation_times(monitor, policy: PolicyConfig, speed: float, nodes: list[str]):
    """Decision -> applied (ms) of every applied command, reaction times (s) of threshold crossings, their
    count, and the wall time of each node's swaps."""
    acks = {a["command_id"]: a for a in monitor.acks}
    decision_ms, reaction_s, crossings = [], [], 0
    swap_walls = {n: [] for n in nodes}
    for c in monitor.commands:
        ack = acks.get(c["command_id"])
        if ack is None or ack["status"] != "APPLIED":
            continue
        decision_ms.append(ack["ts_ms"] - c["decided_on_ts_ms"])
        if c["to_variant"] != c["from_variant"]:
            swap_walls[c["node_id"]].append(ack["ts_ms"])
        if c["trigger"] in ("THRESHOLD", "CRITICAL"):
            crossings += 1
            level = policy.hot_c if c["trigger"] == "THRESHOLD" else policy.critical_c
            tele = sorted((t for t in monitor.telemetry if t["node_id"] == c["node_id"]
                           and t["ts_ms"] <= c["decided_on_ts_ms"]), key=lambda t: t["ts_ms"])
            first = None
            for t in reversed(tele):
                if t["gpu_temp_c"] < level:
                    break
                first = t["ts_ms"]
            if first is not None:
                # Hysteresis in scenario time, plus the real (unscaled) decision-to-applied latency.
                reaction_s.append((c["decided_on_ts_ms"] - first) / 1000 * speed
                                  + (ack["ts_ms"] - c["decided_on_ts_ms"]) / 1000)
    return decision_ms, reaction_s, crossings, swap_walls


def throughput_retained(histories: dict, start_mono: dict, swap_walls: dict) -> float | None:
    """Throughput around swaps vs elsewhere, per node.

    The load offers the same rate every second and a request delayed past a second boundary is
    served (late) in the next one, so a swap is judged on the two seconds starting at its own.
    """
    with_swap, without = [], []
    for n, hist in histories.items():
        epoch_wall_ms = (time.time() - (time.monotonic() - start_mono[n])) * 1000
        swap_secs = {int((ms - epoch_wall_ms) / 1000) for ms in swap_walls[n]}
        served = {h.second: h.served for h in hist[1:]}
        for sec in sorted(served):
            if sec + 1 not in served:
                continue
            pair = (served[sec] + served[sec + 1]) / 2
            touched = sec in swap_secs or sec + 1 in swap_secs
            if sec in swap_secs:
                with_swap.append(pair)
            elif not touched and sec - 1 not in swap_secs:
                without.append(pair)
    return (statistics.mean(with_swap) / statistics.mean(without)) if with_swap and without else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=6, help="edge nodes served by one worker process")
    ap.add_argument("--speed", type=float, default=10.0, help="scenario time per wall-clock second")
    ap.add_argument("--cycles", type=int, default=9, help="hot spells per node (80 scenario seconds each)")
    ap.add_argument("--rate", type=float, default=50.0, help="requests/s per node")
    ap.add_argument("--zoo", metavar="DIR", help="zoo directory (default: the full zoo's cache; built first if missing, "
                                                  "about 250 s of CPU)")
    args = ap.parse_args()
    zoo = load_manifest(args.zoo) if args.zoo else build_zoo(progress=progress)  # a named zoo is used as it is
    policy = PolicyConfig().scaled(args.speed)
    nodes = [f"edge-{i + 1}" for i in range(args.nodes)]
    monitor, histories, start_mono, stats, rtt = run_fleet(args, zoo, policy, nodes)
    decision_ms, reaction_s, crossings, swap_walls = adaptation_times(monitor, policy, args.speed, nodes)
    retained = throughput_retained(histories, start_mono, swap_walls)
    dropped = sum(s.dropped for s in stats.values())
    served = sum(s.served for s in stats.values())
    base = zoo.entry("transformer", "fp32").accuracy
    ratios = {f"{e.variant}/{e.precision}": round(e.accuracy / base, 4) for e in zoo}
    min_ratio = min(v for k, v in ratios.items() if not k.endswith("int8"))
    snn = zoo.entry("snn", "fp32")
    latency_ratio = round(zoo.entry("transformer", "fp32").latency_ms_b1 / snn.latency_ms_b1, 2)
    results = {
        "threshold_crossings": crossings, "commands_applied": len(decision_ms),
        "decision_to_applied_ms_p50": pct(decision_ms, 0.5), "decision_to_applied_ms_p99": pct(decision_ms, 0.99),
        "reaction_s_p50": round(pct(reaction_s, 0.5), 3), "reaction_s_p99": round(pct(reaction_s, 0.99), 3),
        "dropped_requests": dropped, "served_requests": served,
        "throughput_retained": round(retained, 4) if retained else None,
        "accuracy_ratio_min": min_ratio, "accuracy_ratios": ratios,
        "latency_ratio_transformer_to_snn": latency_ratio, "accuracy_ratio_snn": round(snn.accuracy / base, 4),
        "ladder_cost_strictly_decreasing": {p: r.get("cost_strictly_decreasing") for p, r in
                                            zoo.info.get("ladder", {}).items() if p != "violations"},
        "zoo_profile": zoo.info.get("profile"), "zoo_task": "inspection",
        "broker_round_trip_ms_p50": round(rtt, 3),
        "ratio_decision_to_applied_p50_to_broker_rtt": round(pct(decision_ms, 0.5) / rtt, 2),
    }
    print(f"threshold crossings acted on: {crossings}; commands applied: {len(decision_ms)}")
    print(f"decision -> applied: p50 {results['decision_to_applied_ms_p50']} ms, p99 "
          f"{results['decision_to_applied_ms_p99']} ms (targets < 100 / < 500); "
          f"{results['ratio_decision_to_applied_p50_to_broker_rtt']}x the broker round trip ({rtt:.2f} ms)")
    print(f"reaction (first sample over threshold -> applied): p50 {results['reaction_s_p50']} s, p99 "
          f"{results['reaction_s_p99']} s (target < 8 s)")
    print(f"requests served {served}, dropped {dropped}; throughput retained in swap seconds: {retained}")
    print(f"accuracy / transformer: min over fp32+fp16 {min_ratio} (target >= 0.90); snn {results['accuracy_ratio_snn']}; "
          f"{ratios}")
    print(f"zoo ladder: transformer / snn batch-1 latency {latency_ratio}x (target >= 8); cost falls strictly at "
          f"every rung: {results['ladder_cost_strictly_decreasing']}")
    emit_result(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
