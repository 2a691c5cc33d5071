"""The seed's scale table (§6.3), measured: 10 / 50 / 200 / 1,000 nodes with 25 / 150 / 800 / 5,000 workflows.

For each scale, on a fresh embedded broker: the control flow and the workflow
flow run as ``liquid flow run`` processes (one worker each, metrics on); a
simulated fleet of varied nodes (`edge.fleet.NodeProfile`) streams Telemetry at
1 sample per node per second of event time and follows the commands (acks
included), and the workflows stream WorkflowSignals: each workflow starts a run
of the seven-step inspection pipeline every ``--run-every`` seconds (14 signals
per run). Time is compressed by ``--speed`` (event time runs that many times
faster than the wall clock; 1 = real time) for ``--window`` seconds of event
time per scale. Measured per scale:

* adaptations per hour — morph commands issued, per hour of event time;
* control-plane CPU seconds per node-hour — user+system CPU of both flow
  processes over the window, per node and hour of event time;
* decision latency p50 / p99 — wall-clock time from a telemetry sample's
  production to the production of the command it caused (both Kafka message
  timestamps), over every command;
* consumer lag — the flows' ``bytewax_kafka_consumer_lag`` scraped every
  second: the largest, and whether it grows (mean of the last third of the
  window over the first third).

And once: the worker-side overhead — a real edge worker (``edge.worker``) serving
one node on the zoo's models with telemetry at 1 Hz, its process CPU against the
same serving with telemetry, command listening and acks off, measured in the same
run: ``overhead = 1 - cpu_inference_only / cpu_with_everything``.

    python bench/scale.py [--scales 10:25,50:150,200:800,1000:5000] [--window 60] [--speed 1]

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _bench import ROOT, emit_result, progress

from deploy.broker import EmbeddedBroker, free_port
from deploy.deploy_cmd import scrape_lag
from deploy.produce import produce_telemetry
from deploy.replay import read_topic
from deploy.topics import ensure_topics
from edge.thermal import Scenario
from fingerprint.traces import run_signals
from schemas import TopicNames
from schemas.codec import Codec
from schemas.kafka import KafkaSettings, produce_waiting

INSPECTION_STEPS = ("ingest", "preprocess", "inference", "quality_gate", "postprocess", "output", "report")
SEED_TABLE = {10: 25, 50: 150, 200: 800, 1000: 5000}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that have been waited for (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def start_flow(name: str, bootstrap: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deploy.cli", "flow", "run", name, "--bootstrap", bootstrap, "--metrics-port",
           str(port)] + (["--models"] if name == "control" else [])
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stream_signals(settings: KafkaSettings, topic: str, workflows: int, window_s: float, speed: float,
                   run_every_s: float, stop: threading.Event) -> int:
    """Each workflow starts a run every ``run_every_s`` of event time (staggered); returns signals sent."""
    from confluent_kafka import Producer

    producer, codec = Producer(settings.producer()), Codec()
    step_ms = int(run_every_s * 1000 / (2 * len(INSPECTION_STEPS)))
    executions = [(s, 2 * i * step_ms, (2 * i + 1) * step_ms) for i, s in enumerate(INSPECTION_STEPS)]
    t0_ms, wall0 = int(time.time() * 1000), time.monotonic()
    runs = int(window_s / run_every_s)
    pending = []
    for r in range(runs):
        for w in range(workflows):
            start = int((r + w / workflows) * run_every_s * 1000)
            pending += run_signals(f"wf-{w}", f"r{r}", executions, t0_ms=t0_ms + start, node_id=f"edge-{w % 1000}")
    pending.sort(key=lambda s: s["ts_ms"])
    sent = 0
    for s in pending:
        if stop.is_set():
            break
        due = (s["ts_ms"] - t0_ms) / 1000 / speed
        wait = due - (time.monotonic() - wall0)
        if wait > 0.005:
            time.sleep(wait)
        produce_waiting(producer, topic, s["workflow_id"].encode(), codec.encode("WorkflowSignal", s))
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
    producer.flush(30)
    return sent


def lag_watch(ports: list[int], stop: threading.Event, samples: list) -> None:
    while not stop.wait(1.0):
        total = 0.0
        for port in ports:
            lag = scrape_lag(port, timeout_s=0.5) or {}
            total += sum(lag.values())
        samples.append(total)


def run_scale(nodes: int, workflows: int, window_s: float, speed: float, run_every_s: float, out_dir: Path) -> dict:
    topics = TopicNames()
    with EmbeddedBroker(log_path=out_dir / f"broker-{nodes}.log") as broker:
        settings = KafkaSettings(broker.bootstrap)
        ensure_topics(settings, topics.all(), partitions=4)
        ports = [free_port(), free_port()]
        flows = [start_flow(name, broker.bootstrap, port, out_dir / f"{name}-{nodes}.log")
                 for name, port in zip(("control", "workflow"), ports)]
        try:
            time.sleep(3.0)  # both flows assign their partitions
            cpu0 = [cpu_seconds(f.pid) for f in flows]
            stop, lags = threading.Event(), []
            watcher = threading.Thread(target=lag_watch, args=(ports, stop, lags), daemon=True)
            watcher.start()
            signals = {}
            streamer = threading.Thread(target=lambda: signals.update(sent=stream_signals(
                settings, topics.signals, workflows, window_s, speed, run_every_s, stop)), daemon=True)
            streamer.start()
            wall0 = time.monotonic()
            fleet = produce_telemetry(settings, topics, [f"edge-{i}" for i in range(nodes)],
                                      Scenario("cycles", duration_s=window_s), speed=speed, seed=nodes, varied=True)
            streamer.join(timeout=window_s / speed + 60)
            time.sleep(2.0)  # the last commands
            wall = time.monotonic() - wall0
            stop.set()
            watcher.join(timeout=5)
            cpu = sum(cpu_seconds(f.pid) for f in flows) - sum(cpu0)
        finally:
            for f in flows:
                f.terminate()
            for f in flows:
                try:
                    f.wait(15)
                except subprocess.TimeoutExpired:
                    f.kill()
        commands = [r for r in read_topic(settings, topics.commands) if r.get("_schema") == "MorphCommand"]
        produced_at = {(r["node_id"], r["ts_ms"]): r["_timestamp_ms"] for r in read_topic(settings, topics.telemetry)
                       if r.get("_schema") == "Telemetry"}
    # wall clock, both ends stamped when produced: the sample by the fleet, the command by the flow
    latencies = sorted(c["_timestamp_ms"] - produced_at[(c["node_id"], c["decided_on_ts_ms"])] for c in commands
                       if (c["node_id"], c["decided_on_ts_ms"]) in produced_at)
    hours = window_s / 3600.0
    third = max(1, len(lags) // 3)
    return {
        "nodes": nodes, "workflows": workflows, "event_hours": round(hours, 4), "wall_s": round(wall, 1),
        "telemetry_sent": fleet["samples"], "signals_sent": signals.get("sent", 0), "commands": len(commands),
        "adaptations_per_hour": round(len(commands) / hours, 1),
        "cpu_s": round(cpu, 2), "cpu_s_per_node_hour": round(cpu / (nodes * hours), 3),
        "decision_ms_p50": _quantile(latencies, 0.5), "decision_ms_p99": _quantile(latencies, 0.99),
        "max_lag": round(max(lags, default=0.0)), "lag_growth": round(
            (statistics.fmean(lags[-third:]) + 1) / (statistics.fmean(lags[:third]) + 1), 2) if lags else None,
    }


def _quantile(sorted_values: list, q: float) -> float | None:
    if not sorted_values:
        return None
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def worker_overhead(seconds: float, rate: float) -> dict:
    """Process CPU of a real worker with everything on vs inference alone, serving one node on the zoo."""
    from edge.serving import InferenceServer, RequestLoad
    from edge.worker import EdgeWorker
    from morph.zoo import build_zoo

    manifest = build_zoo(progress=progress)

    def measure(run) -> float:
        t0 = time.process_time()
        run()
        return time.process_time() - t0

    def inference_only():
        server = InferenceServer(manifest, "transformer", "fp32")
        load = RequestLoad(server, rate=rate, seed=0)
        load.start()
        time.sleep(seconds)
        load.stop()
        server.close()

    def everything():
        with EmbeddedBroker() as broker:
            settings = KafkaSettings(broker.bootstrap)
            ensure_topics(settings, TopicNames().all(), partitions=2)
            worker = EdgeWorker(settings, TopicNames(), ["edge-1"], Scenario("steady", seconds), zoo_dir=manifest.root,
                                sensor="thermal", rate=rate, interval_s=1.0)
            worker.start()
            time.sleep(seconds)
            worker.stop()

    base, full = measure(inference_only), measure(everything)
    return {"cpu_s_inference_only": round(base, 3), "cpu_s_worker": round(full, 3),
            "worker_overhead_fraction": round(max(0.0, 1.0 - base / full), 4) if full else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="10:25,50:150,200:800,1000:5000", help="nodes:workflows,... (default the seed's)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of event time per scale (default %(default)s)")
    ap.add_argument("--speed", type=float, default=1.0, help="event time / wall time (default %(default)s: real time)")
    ap.add_argument("--run-every", type=float, default=60.0, help="seconds between a workflow's runs (default %(default)s)")
    ap.add_argument("--worker-seconds", type=float, default=20.0, help="length of each worker measurement")
    ap.add_argument("--worker-rate", type=float, default=100.0, help="requests/s the measured worker serves")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench-scale", help="logs (default %(default)s)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scales = []
    for item in args.scales.split(","):
        nodes, workflows = (int(x) for x in item.split(":"))
        progress(f"scale {nodes} nodes / {workflows} workflows: {args.window:g} s of event time at x{args.speed:g}")
        row = run_scale(nodes, workflows, args.window, args.speed, args.run_every, args.out)
        scales.append(row)
        print(f"{nodes:>5} nodes {workflows:>5} workflows: {row['adaptations_per_hour']:>8.0f} adaptations/h, "
              f"{row['cpu_s_per_node_hour']:.2f} CPU s/node-h, decision p50 {row['decision_ms_p50']} ms "
              f"p99 {row['decision_ms_p99']} ms, max lag {row['max_lag']} (growth x{row['lag_growth']})", flush=True)
    per_node = [s["cpu_s_per_node_hour"] for s in scales]
    growth = round(per_node[-1] / per_node[0], 2) if len(per_node) > 1 and per_node[0] else None
    print(f"control-plane CPU per node-hour, largest scale / smallest: {growth} (flat = 1.0)")
    progress("worker overhead: inference alone, then the whole worker")
    overhead = worker_overhead(args.worker_seconds, args.worker_rate)
    print(f"worker: {overhead['cpu_s_worker']} CPU s with everything vs {overhead['cpu_s_inference_only']} inference "
          f"alone -> overhead {overhead['worker_overhead_fraction']}")
    emit_result({"scales": scales, "cpu_per_node_hour_growth": growth, "window_event_s": args.window,
                 "speed": args.speed, "run_every_s": args.run_every, **overhead,
                 "targets": {"decision_ms_p99": 100, "worker_overhead_fraction": 0.02}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
