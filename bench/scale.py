"""The seed's scale table (§6.3), measured: 10 / 50 / 200 / 1,000 nodes with 25 / 150 / 800 / 5,000 workflows.

For each scale, on a fresh embedded broker: the control flow and the workflow
flow run as "liquid flow run" processes (one worker each, metrics on); a
simulated fleet of varied nodes (edge.fleet.NodeProfile) streams Telemetry at
1 sample per node per second of event time and follows the commands (acks
included), and the workflows stream WorkflowSignals: each workflow starts a run
of the seven-step inspection pipeline every --run-every seconds (14 signals
per run, workflows staggered over that period).

Time: event time runs --speed times faster than the wall clock (default 1:
real time, no compression: 1,000 nodes are 1,000 samples per wall second and
5,000 workflows ~1,170 signals per wall second). --speed 2 doubles every
rate instead of shortening a fixed workload: it is a stress test, not the
seed's rates. Each scale runs --window seconds of event time.

Each node samples at its own phase within the second (drawn from its id), as
independent nodes' clocks do; --lockstep makes all nodes sample at the same
instant instead (a burst of N samples every second, the worst case for latency).

The load generator stands in for the whole fleet and all the workflows through
one producer each, as a site's gateway would: its producers batch for
--linger-ms (default 20). The embedded broker's cost is per request and its
fetches get dearer with every record batch a partition holds (bench/broker.py),
so a load generator sending a request per record or two measured the broker's
collapse, not the flows. Topics get --partitions (default 1, one per flow
worker): each partition is one more consumer fetching from the broker.

Measured per scale:

* adaptations per hour — morph commands issued, per hour of event time;
* control-plane CPU seconds per node-hour — user+system CPU of both flow
  processes over the window, per node and hour of event time; also net of the
  flows' idle cost (their CPU with no traffic, measured for a few seconds after
  the window, scaled to it), which is the part that grows with the fleet; and
  the CPU per event until the flows caught up: per telemetry sample in the
  control flow, per signal in the workflow flow (flat across scales = each
  event costs the same however many nodes there are; the seed's table has 2.5
  workflows per node at 10 nodes and 5 at 1,000, so cost per node-hour cannot
  be flat when workflows are not; at small scales the idle polling dominates);
* decision latency p50 / p99 — for every command, the wall-clock time from the
  production of the telemetry sample it was decided on (decided_on_ts_ms)
  to the command's production by the control flow: both are the Kafka message
  timestamps (CreateTime, stamped when the client's produce() is called), so it
  covers the broker hop to the flow, queueing in the flow, the decision itself
  and the flow's sink, but not the command's delivery to the node;
* consumer lag — the flows' bytewax_kafka_consumer_lag scraped every
  second: the largest, whether it grows (mean of the last third of the window
  over the first third), and how long the flows took to catch up after the load
  stopped;
* CPU share of every process on the machine's cores (broker, each flow, this
  load generator): the load generator and the broker share the cores with the
  flows, and a share near the core count means the figures are CPU-bound; and
  the machine's 1-minute load average at the end of the window (other users'
  jobs included: above the core count, every process here waits for a core).
  cpu_cores_used sums them: what the scale needs from the machine;
* how long each process was ready to run but waited for a core (Linux
  schedstat run_delay, summed over its threads, per wall second): a process
  that waits longer than it computes was starved by the machine, not slow;
* requests per second to the broker from every client (librdkafka statistics:
  the flows' liquid_kafka_client_requests gauges, the load generator's own
  clients' stats_cb), by kind (Fetch, Produce), and the broker's CPU per request.

And once: the worker-side overhead — a real edge worker (edge.worker) serving
one node on the zoo's models with telemetry at 1 Hz, in its steady state (after
a few seconds' warm-up). worker_overhead_fraction is the share of the worker's
CPU spent on everything but inference, split by thread (Linux schedstat, ns):
the CPU of every thread but the serving ones (the request stream, the swap pool,
ONNX Runtime's own threads) over the process's, with the split in
worker_overhead_ms_per_s (outbox drain, telemetry, listeners, librdkafka's
threads, the rest), its sum in worker_overhead_cores (it does not depend on the
model's cost, the fraction does: a lighter zoo gives a larger fraction), and each
part's wake-ups per second in worker_wakeups_per_s (what an idle part's cost
mostly is: see `thread_activity`); this benchmark's own main thread is not in the
split (bench_thread_ms_per_s). Beside it, the difference of two runs: the
process's CPU per request served against the same serving with telemetry,
command listening and acks off, measured in the same run,
worker_overhead_fraction_by_difference = 1 - cpu_per_request_inference_only /
cpu_per_request_with_everything (and worker_overhead_cores_by_difference). It
counts what the by-thread split cannot (serving slowed by the other threads'
cache misses), but inference alone costs a few per cent more or less from one run
to the next, so at a light model's load it says little (0 is printed for a
negative difference).
telemetry_sample_us is the median thread CPU of one telemetry sample's reading
and record (sensor, load figures) as the worker takes it, once a second, and
telemetry_sample_us_warm the same code run back to back on the same worker after
the window: their ratio (telemetry_sample_cold_factor) is what running once a
second, cold, costs on this machine, where the worker's other parts run the same way.
Measured twice: with the listeners' fetch wait of the embedded broker
(edge.listener.EDGE_FETCH_WAIT_MS, the fields above) and, unless --long-poll-ms 0,
with the wait for a broker that long-polls (LONG_POLL_FETCH_WAIT_MS: a Kafka
cluster answers a fetch when a record arrives, Tansu only when the wait ends; the
client's CPU per fetch cycle is the same on both), in the fields ending in _long_poll.

    python bench/scale.py [--scales 10:25,50:150,200:800,1000:5000] [--window 60] [--speed 1]
           [--bootstrap HOST:PORT [--broker-pid PID]]

--bootstrap runs against a Kafka-compatible broker already running instead of
a fresh embedded one per scale. The read-back counts every record of the
project's topics, so that broker must not hold them yet (the run checks) and a
run measures one thing on it: one scale, or the worker alone (--scales "").

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _bench import ROOT, add_broker_options, broker_for, emit_result, progress

from deploy.broker import free_port
from deploy.deploy_cmd import scrape_lag
from deploy.produce import produce_telemetry
from deploy.replay import read_topic
from deploy.topics import ensure_topics
from edge.listener import EDGE_FETCH_WAIT_MS, LONG_POLL_FETCH_WAIT_MS
from edge.thermal import Scenario
from fingerprint.traces import run_signals
from schemas import TopicNames
from schemas.codec import Codec
from schemas.kafka import KafkaSettings, produce_waiting

INSPECTION_STEPS = ("ingest", "preprocess", "inference", "quality_gate", "postprocess", "output", "report")
SEED_TABLE = {10: 25, 50: 150, 200: 800, 1000: 5000}
IDLE_S = 3.0  # seconds the flows' idle CPU is measured over, after the load


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that have been waited for (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_queue_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a core (Linux schedstat run_delay).

    Beside its CPU seconds it says whether a slow process was busy or starved: on a
    machine shared with other jobs a flow can wait longer for a core than it computes.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            continue
    return total / 1e9


def start_flow(name: str, bootstrap: str, port: int, log: Path, flow_args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deploy.cli", "flow", "run", name, "--bootstrap", bootstrap, "--metrics-port",
           str(port)] + (["--models"] if name == "control" else []) + flow_args
    # Its own session, as the broker has: with the kernel's autogroup scheduling (on by default) a
    # session is one scheduling group, so flows started in this benchmark's session split one share
    # of the machine with the load generator, where deployed flows are services of their own.
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def stream_signals(settings: KafkaSettings, topic: str, workflows: int, window_s: float, speed: float,
                   run_every_s: float, stop: threading.Event) -> int:
    """Each workflow starts a run every ``run_every_s`` of event time (staggered); returns signals sent.

    Runs already under way when the window opens are included (their steps that start from then
    on), so the signal rate is the steady one from the first second; signals after the window are
    not sent.
    """
    from confluent_kafka import Producer

    producer, codec = Producer(settings.producer()), Codec()
    step_ms = int(run_every_s * 1000 / (2 * len(INSPECTION_STEPS)))
    executions = [(s, 2 * i * step_ms, (2 * i + 1) * step_ms) for i, s in enumerate(INSPECTION_STEPS)]
    t0_ms, wall0 = int(time.time() * 1000), time.monotonic()
    runs = math.ceil(window_s / run_every_s)
    pending = []
    for r in range(-1, runs):
        for w in range(workflows):
            start = int((r + w / workflows) * run_every_s * 1000)
            if start >= window_s * 1000:  # a window shorter than --run-every still starts the first runs
                break
            # a run under way when the window opens: its steps from then on (no finish without its start)
            steps = [e for e in executions if start + e[1] >= 0]
            pending += run_signals(f"wf-{w}", f"r{r + 1}", steps, t0_ms=t0_ms + start, node_id=f"edge-{w % 1000}")
    pending = sorted((s for s in pending if t0_ms <= s["ts_ms"] < t0_ms + window_s * 1000), key=lambda s: s["ts_ms"])
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


def wait_ready(ports: list[int], flows: list, settings: KafkaSettings, topics: TopicNames,
               timeout_s: float = 120.0) -> None:
    """Until both flows consume: each has read a probe record (its lag gauge exists and is 0).

    Bytewax's lag gauge has no sample for an empty partition, so one Telemetry record of a probe
    node and one WorkflowSignal of a probe workflow are produced first (no command can follow one
    sample, so the probes do not enter the figures).
    """
    from confluent_kafka import Producer

    from edge.fleet import SimulatedNode

    codec, producer = Codec(), Producer(settings.producer())
    probe = SimulatedNode("probe-0", Scenario("steady")).sample(int(time.time() * 1000), 1.0)
    producer.produce(topics.telemetry, key=b"probe-0", value=codec.encode("Telemetry", probe))
    probe_signal = run_signals("probe-wf", "r0", [("ingest", 0, 1)], t0_ms=int(time.time() * 1000))[0]
    producer.produce(topics.signals, key=b"probe-wf", value=codec.encode("WorkflowSignal", probe_signal))
    producer.flush(10)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(f.poll() is not None for f in flows):
            raise RuntimeError("a flow exited at start: see its log in --out")
        lags = [scrape_lag(port, timeout_s=0.5) for port in ports]
        if all(lags) and not any(sum(lag.values()) for lag in lags):
            return
        time.sleep(0.25)
    raise RuntimeError(f"the flows did not consume a probe record within {timeout_s:.0f} s")


def scrape_requests(port: int) -> dict[str, float] | None:
    """``{"Fetch": n, "Produce": n}``: the requests a flow's Kafka clients have sent so far (its librdkafka
    statistics); None when the flow does not answer (a starved flow can miss the timeout)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:  # that gauge alone: a whole exposition stalls the flow (deploy.deploy_cmd.scrape_lag)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?name[]=liquid_kafka_client_requests",
                                    timeout=10.0) as response:
            text = response.read().decode()
    except OSError:
        return None
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "liquid_kafka_client_requests":
            for sample in family.samples:
                kind = sample.labels.get("request", "?")
                totals[kind] = totals.get(kind, 0.0) + sample.value
    return totals


class RequestStats:
    """The load generator's own clients' requests, from librdkafka's statistics callback (cumulative per client)."""

    def __init__(self):
        self.lock, self.by_client = threading.Lock(), {}

    def __call__(self, stats_json: str) -> None:
        """One statistics report of one of the load generator's clients (keyed by its name): a stats_cb."""
        import json

        stats = json.loads(stats_json)
        counts: dict[str, int] = {}
        for broker in stats.get("brokers", {}).values():
            if broker.get("nodeid", -1) >= 0:  # not the bootstrap connection
                for kind in ("Produce", "Fetch"):
                    counts[kind] = counts.get(kind, 0) + broker.get("req", {}).get(kind, 0)
        with self.lock:
            self.by_client[stats.get("name", "?")] = counts

    def totals(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for counts in self.by_client.values():
                for kind, n in counts.items():
                    out[kind] = out.get(kind, 0) + n
            return out


def drain_seconds(ports: list[int], timeout_s: float = 120.0) -> float | None:
    """Seconds until both flows have caught up (lag 0) after the load stopped; None if they did not."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        lags = [scrape_lag(port, timeout_s=0.5) or {} for port in ports]
        if not any(sum(lag.values()) for lag in lags):
            return round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    return None


def idle_cpu_share(flows: list) -> list[float]:
    """Cores each flow uses with no traffic (after the window, lag drained): its fixed cost."""
    before, t0 = [cpu_seconds(f.pid) for f in flows], time.monotonic()
    time.sleep(IDLE_S)
    return [(cpu_seconds(f.pid) - b) / (time.monotonic() - t0) for f, b in zip(flows, before)]


def read_within(settings: KafkaSettings, topic: str, timeout_s: float = 180.0) -> list[dict]:
    """`read_topic`, or what it read by ``timeout_s`` ([] and a warning): a read that never reaches
    the end it computed (seen once at 1,000 nodes, after a producer gave up 6,473 records) must not
    hang the benchmark."""
    result: list = []
    reader = threading.Thread(target=lambda: result.extend(read_topic(settings, topic)), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        progress(f"warning: reading {topic} back did not finish within {timeout_s:.0f} s; its figures are missing")
        return []
    return result


def lag_watch(ports: list[int], stop: threading.Event, samples: list) -> None:
    """Every second, each flow's total consumer lag (one tuple per second, one entry per flow)."""
    while not stop.wait(1.0):
        samples.append(tuple(sum((scrape_lag(port, timeout_s=0.5) or {}).values()) for port in ports))


def stop_flows(flows: list) -> None:
    """SIGTERM to each flow (they stop their clients), SIGKILL to one that has not exited 15 s later."""
    for f in flows:
        f.terminate()
    for f in flows:
        try:
            f.wait(15)
        except subprocess.TimeoutExpired:
            f.kill()


def run_scale(nodes: int, workflows: int, args) -> dict:
    window_s, speed = args.window, args.speed
    topics = TopicNames()
    generator_requests = RequestStats()
    with broker_for(args, log_path=args.out / f"broker-{nodes}.log") as broker:
        # the load generator's clients: its producers batch for --linger-ms (it stands in for a whole fleet)
        settings = KafkaSettings(broker.bootstrap, {"linger.ms": str(args.linger_ms), "statistics.interval.ms": "1000",
                                                    "stats_cb": generator_requests})
        ensure_topics(settings, topics.all(), partitions=args.partitions)
        ports = [free_port(), free_port()]
        flows = [start_flow(name, broker.bootstrap, port, args.out / f"{name}-{nodes}.log", args.flow_arg)
                 for name, port in zip(("control", "workflow"), ports)]
        try:
            wait_ready(ports, flows, settings, topics)
            pids = {"broker": broker.pid, "control": flows[0].pid, "workflow": flows[1].pid}
            if pids["broker"] is None:  # an external broker without --broker-pid: its CPU is not measured
                del pids["broker"]
            cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
            watched = {**pids, "load_generator": os.getpid()}
            waited0 = {k: run_queue_wait_s(pid) for k, pid in watched.items()}
            own0 = time.process_time()
            requests0 = requests_now(ports, generator_requests)
            stop, lags = threading.Event(), []
            watcher = threading.Thread(target=lag_watch, args=(ports, stop, lags), daemon=True)
            watcher.start()
            signals = {}
            streamer = threading.Thread(target=lambda: signals.update(sent=stream_signals(
                settings, topics.signals, workflows, window_s, speed, args.run_every, stop)), daemon=True)
            streamer.start()
            wall0 = time.monotonic()
            fleet = produce_telemetry(settings, topics, [f"edge-{i}" for i in range(nodes)],
                                      Scenario("cycles", duration_s=window_s), speed=speed, seed=nodes, varied=True,
                                      staggered=not args.lockstep)
            streamer.join(timeout=window_s / speed + 60)
            time.sleep(2.0)  # the last commands
            wall = time.monotonic() - wall0
            stop.set()
            watcher.join(timeout=5)
            cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
            waited = {k: run_queue_wait_s(pid) - waited0[k] for k, pid in watched.items()}
            time.sleep(1.0)  # librdkafka reports its statistics every second
            requests1, wall_requests = requests_now(ports, generator_requests), time.monotonic() - wall0
            cpu["load_generator"] = time.process_time() - own0
            load_end = os.getloadavg()[0]  # the whole machine's, other users' jobs included
            drain_s = drain_seconds(ports)
            # the flows' CPU until they caught up: a backlog at the window's end is work for its events too
            caught_up = {flow: cpu_seconds(pids[flow]) - cpu0[flow] for flow in ("control", "workflow")}
            wall_caught_up = time.monotonic() - wall0
            idle = dict(zip(("control", "workflow"), idle_cpu_share(flows)))
        finally:
            stop_flows(flows)
        commands = [r for r in read_within(settings, topics.commands) if r.get("_schema") == "MorphCommand"]
        produced_at = {(r["node_id"], r["ts_ms"]): r["_timestamp_ms"] for r in read_within(settings, topics.telemetry)
                       if r.get("_schema") == "Telemetry"}
    decisions = [(produced_at[(c["node_id"], c["decided_on_ts_ms"])], c["_timestamp_ms"]) for c in commands
                 if (c["node_id"], c["decided_on_ts_ms"]) in produced_at]  # (sample produced, command produced)
    latencies = sorted(done - produced for produced, done in decisions)
    hours = window_s / 3600.0
    flows_cpu = cpu["control"] + cpu["workflow"]
    net = {flow: max(0.0, caught_up[flow] - idle[flow] * wall_caught_up) for flow in idle}
    return {
        "nodes": nodes, "workflows": workflows, "event_hours": round(hours, 4), "wall_s": round(wall, 1),
        "telemetry_sent": fleet["samples"], "signals_sent": signals.get("sent", 0), "commands": len(commands),
        "adaptations_per_hour": round(len(commands) / hours, 1),
        "cpu_s": round(flows_cpu, 2), "cpu_s_per_node_hour": round(flows_cpu / (nodes * hours), 3),
        "net_cpu_s_per_node_hour": round(sum(net.values()) / (nodes * hours), 3),
        "flows_idle_cpu_share": round(sum(idle.values()), 3),
        # per event, everything included (idle polling too: small once events arrive every millisecond)
        "control_us_per_sample": round(caught_up["control"] / max(1, fleet["samples"]) * 1e6, 1),
        "workflow_us_per_signal": round(caught_up["workflow"] / max(1, signals.get("sent", 0)) * 1e6, 1),
        "cpu_share": {k: round(v / wall, 3) for k, v in cpu.items()},
        # seconds per second each process's threads were ready to run but waited for a core (other jobs included)
        "run_queue_wait_share": {k: round(v / wall, 3) for k, v in waited.items()},
        **request_figures(requests0, requests1, wall_requests, cpu["broker"] / wall if "broker" in cpu else None),
        "decision_ms_p50": _quantile(latencies, 0.5), "decision_ms_p99": _quantile(latencies, 0.99),
        **lag_figures(lags),
        "decision_ms_p99_by_10s": _p99_by_window(decisions, 10_000),
        "catch_up_s": drain_s, "cpu_cores_used": round(sum(cpu.values()) / wall, 2),
        "load_average_1m": round(load_end, 2),
    }


def requests_now(ports: list[int], generator: RequestStats) -> dict:
    """Requests sent so far by each flow's clients and by the load generator's (None: a flow did not answer)."""
    return {"control": scrape_requests(ports[0]), "workflow": scrape_requests(ports[1]),
            "load_generator": generator.totals()}


def request_figures(before: dict, after: dict, seconds: float, broker_cpu_share: float | None) -> dict:
    """What every client asked of the broker per second (librdkafka statistics), and the broker's CPU per request."""
    rates = {client: {kind: round((after[client].get(kind, 0) - before[client].get(kind, 0)) / seconds, 1)
                      for kind in ("Produce", "Fetch")}
             for client in before if before[client] is not None and after[client] is not None}
    if len(rates) < len(before):  # a flow's count is missing: the broker's cost per request is unknown
        return {"requests_per_s": rates, "broker_requests_per_s": None, "broker_us_per_request": None}
    total = sum(sum(r.values()) for r in rates.values())
    return {"requests_per_s": rates, "broker_requests_per_s": round(total, 1),
            "broker_us_per_request": None if broker_cpu_share is None
            else round(broker_cpu_share / max(1e-9, total) * 1e6, 1)}


def lag_figures(lags: list[tuple]) -> dict:
    """Largest total lag, its growth (last third of the window over the first), per flow, and each second's."""
    total = [sum(sample) for sample in lags]
    third = max(1, len(lags) // 3)
    growth = round((statistics.fmean(total[-third:]) + 1) / (statistics.fmean(total[:third]) + 1), 2) if lags else None
    return {"max_lag": round(max(total, default=0.0)), "lag_growth": growth,
            "max_lag_by_flow": {name: round(max((s[i] for s in lags), default=0.0))
                                for i, name in enumerate(("control", "workflow"))},
            "lag_by_second": [list(map(round, sample)) for sample in lags]}  # [control, workflow] each second


def _p99_by_window(decisions: list[tuple[int, int]], window_ms: int) -> list:
    """Decision latency p99 per window of sample time: when in the run the slow decisions were."""
    if not decisions:
        return []
    t0 = min(produced for produced, _ in decisions)
    buckets: dict[int, list] = {}
    for produced, done in decisions:
        buckets.setdefault((produced - t0) // window_ms, []).append(done - produced)
    return [_quantile(sorted(buckets.get(k, [])), 0.99) for k in range(max(buckets) + 1)]


def _quantile(sorted_values: list, q: float) -> float | None:
    if not sorted_values:
        return None
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


SERVING_THREADS = ("request-load", "ThreadPoolExecutor")  # the request stream and the swap pool


def thread_activity() -> dict[str, tuple[float, int]]:
    """CPU seconds and wake-ups of this process's threads so far, by role: serving, or the worker's other parts.

    Threads Python started are known by name; librdkafka's are named ``rdk:*``; the
    remaining native threads are ONNX Runtime's pools, counted as serving; the main thread is
    this benchmark's ("bench", kept out of the worker's split). A wake-up is a
    voluntary context switch (the thread slept, on a timer, a lock or a socket): on this
    2-core VM each costs a thread 40-130 µs of CPU before it does anything, so an idle part's
    cost is mostly its wake-ups per second.
    """
    names = {t.native_id: t.name for t in threading.enumerate()}
    # This benchmark's own thread (it sleeps, then reads /proc for every thread: 0.07-0.28 ms/s over a
    # 20 s window, all of the former "other"), not the worker's: a `liquid worker`'s main thread
    # waits for a signal (deploy.worker).
    names[threading.main_thread().native_id] = "bench"
    out: dict[str, tuple[float, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:  # the thread ended in between
            continue
        wakes = int(status.split("voluntary_ctxt_switches:", 1)[1].split(None, 1)[0])
        name = names.get(int(tid))
        if comm.startswith("rdk:"):
            role = "librdkafka"
        elif name is None or name.startswith(SERVING_THREADS):
            role = "serving"
        elif name.startswith("commands-"):
            role = "listeners"
        elif name == "bench":
            role = "bench"
        else:
            role = {"outbox-drain": "outbox", "telemetry": "telemetry"}.get(name, "other")
        cpu, woken = out.get(role, (0.0, 0))
        out[role] = (cpu + ns / 1e9, woken + wakes)
    return out


def worker_overhead(seconds: float, rate: float, zoo: Path | None = None, warm_s: float = 3.0, args=None,
                    long_poll_ms: int | None = None) -> dict:
    """Process CPU per request served of a real worker with everything on vs inference alone, one node on the zoo.

    Both are measured in their steady state, from ``warm_s`` after start to ``seconds`` later:
    starting (imports, the test split, sessions, the broker connection) costs once, not per
    sample. Per request served, not per run: on a loaded machine the two runs do not serve
    the same number of requests (late ones are dropped). With ``long_poll_ms`` the worker is
    measured a second time with its listeners' fetch wait at that (the setting for a broker
    that long-polls, `edge.listener.LONG_POLL_FETCH_WAIT_MS`): the client's CPU per fetch
    cycle is the same on any broker, so the figure stands for a Kafka cluster's; its fields
    end in ``_long_poll``, and the others keep meaning the default setting.
    """
    from edge.serving import InferenceServer, RequestLoad
    from edge.worker import EdgeWorker
    from morph.zoo import build_zoo, load_manifest

    manifest = load_manifest(zoo) if zoo else build_zoo(progress=progress)

    def steady(loads) -> tuple[float, int, dict, dict]:
        """CPU seconds, requests served, and CPU seconds and wake-ups by thread role, over the window."""
        time.sleep(warm_s)
        threads0 = thread_activity()
        cpu0, served0 = time.process_time(), sum(load.stats().served for load in loads)
        time.sleep(seconds)
        cpu, served = time.process_time() - cpu0, sum(load.stats().served for load in loads) - served0
        split, wakeups = {}, {}
        for role, (t, n) in thread_activity().items():
            t0, n0 = threads0.get(role, (0.0, 0))
            split[role], wakeups[role] = t - t0, n - n0
        return cpu, served, split, wakeups

    def inference_only():
        server = InferenceServer(manifest, "transformer", "fp32")
        load = RequestLoad(server, rate=rate, seed=0)
        load.start()
        try:
            return steady([load])
        finally:
            load.stop()
            server.close()

    def everything(fetch_wait_ms: int):
        with broker_for(args) as broker:  # a fresh embedded one unless --bootstrap
            settings = KafkaSettings(broker.bootstrap)
            ensure_topics(settings, TopicNames().all(), partitions=1)
            worker = EdgeWorker(settings, TopicNames(), ["edge-1"], Scenario("steady", seconds + 2 * warm_s),
                                zoo_dir=manifest.root, sensor="thermal", rate=rate, interval_s=1.0,
                                fetch_wait_ms=fetch_wait_ms)
            sampled = timed_samples(worker)
            worker.start()
            try:
                measured = steady([node.load for node in worker.nodes.values()])
                in_place = sampled[-int(seconds):]  # the window's samples, not the warm-up's
            finally:
                worker.stop()
        # after the stop: the telemetry thread no longer samples the same node at the same time
        return (*measured, statistics.median(in_place) if in_place else None, warm_sample_us(worker))

    def figures(full: float, full_served: int, split: dict, wakeups: dict, sample_us: float | None,
                warm_us: float, suffix: str = "") -> dict:
        per_base, per_full = base / max(1, base_served), full / max(1, full_served)
        bench = split.pop("bench", 0.0)
        wakeups.pop("bench", None)
        threads_total = sum(split.values())
        others = threads_total - split.get("serving", 0.0)
        return {f"cpu_s_worker{suffix}": round(full, 3), f"served_worker{suffix}": full_served,
                # the measure the < 2 % target names: everything but inference over the worker's CPU, by thread
                f"worker_overhead_fraction{suffix}": round(others / threads_total, 4) if threads_total else None,
                # the same in cores: what everything but inference costs per second, whatever the model costs
                f"worker_overhead_cores{suffix}": round(others / seconds, 4),
                f"worker_overhead_fraction_by_difference{suffix}": round(max(0.0, 1.0 - per_base / per_full), 4)
                if full_served else None,
                f"worker_overhead_cores_by_difference{suffix}":
                    round(max(0.0, (per_full - per_base) * full_served / seconds), 4),
                f"worker_overhead_ms_per_s{suffix}": {role: round(t / seconds * 1000, 3)
                                                      for role, t in sorted(split.items()) if role != "serving"},
                f"worker_wakeups_per_s{suffix}": {role: round(n / seconds, 1) for role, n in sorted(wakeups.items())
                                                  if role != "serving"},
                # the measuring thread's CPU: in the process's (the difference of runs), not in the split
                f"bench_thread_ms_per_s{suffix}": round(bench / seconds * 1000, 3),
                # one telemetry sample's reading and record (sensor, load figures), as the worker takes it once a
                # second, and the same code run back to back on the same worker: what running cold costs here
                f"telemetry_sample_us{suffix}": None if sample_us is None else round(sample_us, 1),
                f"telemetry_sample_us_warm{suffix}": round(warm_us, 1),
                f"telemetry_sample_cold_factor{suffix}": round(sample_us / warm_us, 1) if sample_us and warm_us else None}

    base, base_served, _, _ = inference_only()
    out = {"cpu_s_inference_only": round(base, 3), "served_inference_only": base_served,
           **figures(*everything(EDGE_FETCH_WAIT_MS)), "worker_fetch_wait_ms": EDGE_FETCH_WAIT_MS}
    if long_poll_ms:
        out.update(figures(*everything(long_poll_ms), suffix="_long_poll"))
        out["worker_fetch_wait_ms_long_poll"] = long_poll_ms
    out["worker_zoo"] = str(manifest.root)
    return out


def timed_samples(worker) -> list[float]:
    """Wrap ``worker.telemetry`` (a sample's readings and record) to keep each call's thread CPU, µs."""
    took, take = [], worker.telemetry

    def timed(node, now_ms):
        t0 = time.thread_time_ns()
        try:
            return take(node, now_ms)
        finally:
            took.append((time.thread_time_ns() - t0) / 1e3)

    worker.telemetry = timed
    return took


def warm_sample_us(worker, n: int = 200) -> float:
    """Median thread CPU (µs) of the worker's telemetry sample taken ``n`` times back to back: its warm cost.

    `edge.worker.EdgeWorker.telemetry` (the class's, not the timed wrapper) on the worker's first node, once the
    worker has stopped: its sensor, its load's figures. The node's thermal model advances by n intervals; nothing
    is published."""
    node = next(iter(worker.nodes.values()))
    took = []
    for _ in range(n):
        t0 = time.thread_time_ns()
        type(worker).telemetry(worker, node, int(time.time() * 1000))
        took.append((time.thread_time_ns() - t0) / 1e3)
    return statistics.median(took)


def check_external_broker(ap, args, items: list) -> None:
    """With --bootstrap: one measurement per run, on a broker that does not hold the project's topics yet."""
    from deploy.errors import UsageError
    from deploy.kafka import check_reachable

    if len(items) + (args.worker_seconds > 0) != 1:
        ap.error("with --bootstrap a run measures one thing: one scale with --worker-seconds 0, "
                 "or the worker alone with --scales \"\"")
    try:
        held = sorted(set(TopicNames().all()) & set(check_reachable(KafkaSettings(args.bootstrap)).topics))
    except UsageError as err:
        ap.error(str(err))
    if held:
        ap.error(f"the broker at {args.bootstrap} already holds {', '.join(held)}: their records would enter the "
                 f"figures; start it afresh")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="10:25,50:150,200:800,1000:5000", help="nodes:workflows,... (default the seed's)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of event time per scale (default %(default)s)")
    ap.add_argument("--speed", type=float, default=1.0,
                    help="event time / wall time; every rate is multiplied by it (default %(default)s: real time)")
    ap.add_argument("--run-every", type=float, default=60.0, help="seconds between a workflow's runs (default %(default)s)")
    ap.add_argument("--lockstep", action="store_true",
                    help="every node samples at the same instant of each second (default: each at its own phase)")
    ap.add_argument("--partitions", type=int, default=1,
                    help="partitions per topic (default %(default)s: one per flow worker, each flow runs one; "
                         "every partition is one more consumer fetching from the broker)")
    ap.add_argument("--linger-ms", type=float, default=20.0,
                    help="linger.ms of the load generator's producers (default %(default)s): it stands in for the "
                         "whole fleet through one producer, and the embedded broker's cost is per request")
    ap.add_argument("--flow-arg", action="append", default=[], metavar="ARG",
                    help="extra `liquid flow run` argument for both flows, repeatable (e.g. --flow-arg=--batch-size=100)")
    ap.add_argument("--worker-seconds", type=float, default=20.0,
                    help="length of each worker measurement (0: skip the worker measurement)")
    ap.add_argument("--worker-rate", type=float, default=100.0, help="requests/s the measured worker serves")
    ap.add_argument("--long-poll-ms", type=int, default=LONG_POLL_FETCH_WAIT_MS, metavar="MS",
                    help="measure the worker a second time with its listeners' fetch wait at MS, the setting for a "
                         "broker that long-polls (default %(default)s; 0: only the embedded broker's "
                         f"{EDGE_FETCH_WAIT_MS} ms); its JSON fields end in _long_poll")
    ap.add_argument("--zoo", type=Path, help="model zoo the measured worker serves, used as it is "
                                             "(default: the built-in cache, built if missing)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench-scale", help="logs (default %(default)s)")
    add_broker_options(ap)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so the flows and the broker this run started are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    items = [tuple(int(x) for x in item.split(":")) for item in filter(None, args.scales.split(","))]
    if args.bootstrap:
        check_external_broker(ap, args, items)
    scales = []
    for nodes, workflows in items:  # --scales "": the worker measurement alone
        progress(f"scale {nodes} nodes / {workflows} workflows: {args.window:g} s of event time at x{args.speed:g}")
        row = run_scale(nodes, workflows, args)
        scales.append(row)
        print(f"{nodes:>5} nodes {workflows:>5} workflows: {row['adaptations_per_hour']:>8.0f} adaptations/h, "
              f"{row['cpu_s_per_node_hour']:.2f} CPU s/node-h ({row['net_cpu_s_per_node_hour']:.2f} net of idle), "
              f"decision p50 {row['decision_ms_p50']} ms p99 {row['decision_ms_p99']} ms, max lag {row['max_lag']} "
              f"(growth x{row['lag_growth']}); CPU {row['control_us_per_sample']} us/sample (control), "
              f"{row['workflow_us_per_signal']} us/signal (workflow); "
              f"CPU share {row['cpu_share']}, waiting for a core {row['run_queue_wait_share']}; broker {row['broker_requests_per_s']} requests/s at "
              f"{row['broker_us_per_request']} us CPU each ({row['requests_per_s']})", flush=True)
    per_node = [s["net_cpu_s_per_node_hour"] for s in scales]
    growth = round(per_node[-1] / per_node[0], 2) if len(per_node) > 1 and per_node[0] else None
    print(f"control-plane CPU per node-hour net of idle, largest scale / smallest: {growth} (flat = 1.0)")
    overhead = {}
    if args.worker_seconds > 0:
        progress("worker overhead: inference alone, then the whole worker")
        overhead = worker_overhead(args.worker_seconds, args.worker_rate, args.zoo, args=args,
                                   long_poll_ms=args.long_poll_ms)
        for suffix, what in (("", f"fetch wait {overhead['worker_fetch_wait_ms']} ms (the embedded broker's)"),
                             ("_long_poll", f"fetch wait {args.long_poll_ms} ms (a long-polling broker's)")):
            if f"cpu_s_worker{suffix}" not in overhead:
                continue
            print(f"worker, {what}: {overhead['cpu_s_worker' + suffix]} CPU s for {overhead['served_worker' + suffix]} "
                  f"requests with everything vs {overhead['cpu_s_inference_only']} for "
                  f"{overhead['served_inference_only']} inference alone -> by difference "
                  f"{overhead['worker_overhead_fraction_by_difference' + suffix]}; overhead by thread, everything but "
                  f"serving: {overhead['worker_overhead_fraction' + suffix]} of the worker's CPU "
                  f"({overhead['worker_overhead_cores' + suffix]} of a core), ms per s: "
                  f"{overhead['worker_overhead_ms_per_s' + suffix]}, wake-ups per s: "
                  f"{overhead['worker_wakeups_per_s' + suffix]}")
    emit_result({"scales": scales, "broker": args.bootstrap or "embedded", "net_cpu_per_node_hour_growth": growth, "window_event_s": args.window,
                 "speed": args.speed, "run_every_s": args.run_every, "lockstep": args.lockstep,
                 "partitions": args.partitions, "linger_ms": args.linger_ms, "flow_args": args.flow_arg, **overhead,
                 "targets": {"decision_ms_p99": 100, "worker_overhead_fraction": 0.02}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
