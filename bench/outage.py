"""A broker outage across the thermal event: store-and-forward, local safety, signed commands.

Two runs of the demo's thermal-event scenario (``edge-1`` goes through hot air
and a failing fan, ``edge-2`` runs steady beside it), real ONNX models, the
control flow (a Bytewax process) signing every command and the worker checking
them against its keyring:

* **connected** (the baseline, same scenario, same seed): the broker up
  throughout; the control flow protects the node;
* **outage**: the embedded broker's process is stopped before the fan fails
  and stays down ``--outage-s`` wall seconds; the worker is restarted in the
  middle of it; then a new broker starts on the same port, the topics are
  recreated (memory storage keeps none) and the control flow is restarted.

Measured: records the node produced and what consumers finally read (lost =
produced and never read — from the first broker before it died, or from the
second after the outbox drained into it); records counted twice by the control
step and the fingerprint (fed every record read, redeliveries included); the
node's local decisions; edge-1's highest temperature from the fan failure to the
end of the outage, in both runs; the outbox's write cost per record (baseline:
librdkafka's own ``produce()`` into its memory queue, same records, same run);
the drain rate after reconnecting against the rate of production during the
outage; and forged, replayed and unsigned commands injected into each run
(accepted = acknowledged APPLIED).

The outbox's write cost is the median of ``--repeats`` repetitions, by how often
it commits (64 records a commit: the drain thread's group commit under a
backlog; 2: a telemetry tick of two nodes; 1: every record durable before
``put`` returns; and the same with an fsync per commit), wall and CPU time,
beside the rate the node produced at during the outage (see
`outbox_write_cost` for what is on disk when).

Sync: both runs also run the sync flow (``liquid flow run sync``) into a SQLite
central store, with two of the four conflict strategies each (connected:
executions ``last_modified``, steps ``edge_wins``; outage: executions
``manual``, steps ``central_wins``). Real conflicts are made in each: an
operator reviews three runs and three steps of edge-1 centrally while the node
(offline, in the outage run) audits the same ones; what ``manual`` holds is
resolved with ``liquid sync resolve --keep central`` at the end. Reported:
records answered by the central store and left unanswered, conflicts by
strategy and resolution, and the round trip from a record queued on the node to
the central answer applied there (p50 / p95 with the link up; in the outage run
it includes the outage).

    python bench/outage.py [--speed 2] [--outage-s 30] [--seed 0] [--zoo DIR]

Figures go to stdout, progress to stderr; the last line is one JSON object.
The model zoo must be built (``liquid zoo build``) or given with ``--zoo``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _bench import ROOT, emit_result
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from deploy.broker import EmbeddedBroker
from deploy.demo import PHASES, RUN_S, SCENARIO_S
from deploy.keys_cmd import KEYRING, PRIVATE, generate_keys
from deploy.topics import ensure_topics
from edge.outbox import TELEMETRY, Outbox
from edge.thermal import Scenario
from edge.worker import EdgeWorker
from fingerprint.store import CentralExecutions
from morph.policy import MorphPolicy, PolicyConfig
from schemas import TopicNames
from schemas.codec import Codec
from schemas.kafka import KafkaSettings
from tests.support import TopicCollector, record_id

TOPICS = TopicNames()
WATCHED = (TOPICS.telemetry, TOPICS.acks, TOPICS.signals, TOPICS.executions, TOPICS.commands)
FAN_FAILS = next(lo for name, lo, _ in PHASES if name == "fan failure")
#: Conflict strategy per entity type of the sync flow in each run: the four strategies, two per run.
SYNC_STRATEGIES = {"connected": {"execution": "last_modified", "step": "edge_wins"},
                   "outage": {"execution": "manual", "step": "central_wins"}}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Run:
    """One run of the scenario: broker, control flow, worker, and what they produced."""

    def __init__(self, args, work: Path, outage: bool):
        self.args, self.work, self.outage = args, work, outage
        self.policy = PolicyConfig().scaled(args.speed)
        self.written: list[str] = []
        self.delivered: dict[str, float] = {}
        self.broker = EmbeddedBroker(log_path=work / "broker.log").start()
        self.settings = KafkaSettings(self.broker.bootstrap, {"log_level": "0"})
        ensure_topics(self.settings, TOPICS.all(), partitions=2)
        self.collectors = [TopicCollector(self.settings, WATCHED, "bench-outage")]
        self.collectors[0].start()
        self.strategies = SYNC_STRATEGIES["outage" if outage else "connected"]
        self.flow = self.start_flow()
        self.sync_flow = self.start_sync_flow()
        self.wait_sync_ready()
        self.local_acks: list[dict] = []
        self.events: dict[str, float] = {}
        self.sync = {"answers": Counter(), "round_trips_ms": [], "conflicts_made": 0}

    def start_flow(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "deploy.cli", "flow", "run", "control", "--bootstrap", self.broker.bootstrap,
               "--zoo", str(self.args.zoo), "--start", "beginning",
               "--signing-key", str(self.work.parent / "keys" / PRIVATE)]
        for key in ("cooldown_s", "recover_cooldown_s", "pending_timeout_s"):
            cmd += ["--policy", f"{key}={getattr(self.policy, key)}"]
        flow = subprocess.Popen(cmd, stdout=open(self.work / "flow.log", "a"), stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
        time.sleep(2.0)  # the flow assigns its partitions before telemetry flows
        return flow

    def start_sync_flow(self) -> subprocess.Popen:
        """The central side: ``liquid flow run sync`` into a SQLite central store that outlives the broker."""
        cmd = [sys.executable, "-m", "deploy.cli", "flow", "run", "sync", "--bootstrap", self.broker.bootstrap,
               "--store", str(self.work / "central.db"), "--signing-key", str(self.work.parent / "keys" / PRIVATE)]
        for entity, strategy in self.strategies.items():
            cmd += ["--conflict", f"{entity}={strategy}"]
        return subprocess.Popen(cmd, stdout=open(self.work / "sync-flow.log", "a"), stderr=subprocess.STDOUT,
                                cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})

    def wait_sync_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until the sync flow answers (a probe node's record): on a loaded machine a Bytewax process
        takes seconds to start, and the conflicts of the outage run need runs answered before the outage."""
        codec, t = Codec(), time.monotonic()
        probe = {"record_id": "execution:probe@1", "entity": "execution", "entity_id": "probe",
                 "execution_id": "probe", "workflow_id": "probe", "node_id": "bench-probe", "status": "completed",
                 "modified_ms": int(time.time() * 1000), "edge_version": 1, "central_seen_ms": 0, "fields": {}}
        producer = Producer(self.settings.producer())
        producer.produce(TOPICS.executions, key=b"bench-probe", value=codec.encode("ExecutionRecord", probe))
        producer.flush(10)
        consumer = Consumer(self.settings.consumer("bench-probe", **{"log_level": "0"}))
        consumer.assign([TopicPartition(TOPICS.sync, p, OFFSET_BEGINNING) for p in range(2)])
        try:
            while time.monotonic() - t < timeout_s:
                for msg in consumer.consume(100, timeout=0.2):
                    if msg.error() is None and codec.decode(msg.value()).record["node_id"] == "bench-probe":
                        say(f"sync flow answering after {time.monotonic() - t:.1f} s")
                        return
            raise RuntimeError(f"the sync flow did not answer in {timeout_s:.0f} s: see {self.work / 'sync-flow.log'}")
        finally:
            consumer.close()

    def make_conflicts(self, worker: EdgeWorker, per_entity: int = 3) -> None:
        """Real conflicts: an operator reviews runs and steps centrally, and the node, not knowing, audits
        the same ones (offline, in the outage run)."""
        store = worker.nodes["edge-1"].sync.store
        answered = store.pending(500, ("accepted",))
        central = CentralExecutions(self.work / "central.db")
        for entity in ("execution", "step"):
            for row in [r for r in answered if r["entity"] == entity][:per_entity]:
                central.edit(entity, row["entity_id"], "reviewed", {"by": "operator"})
                time.sleep(0.002)  # the node's change comes after the operator's (a tie keeps the central one)
                store.upsert(entity, row["entity_id"], row["execution_id"], row["workflow_id"], "audited",
                             {"audit": "node"})
                self.sync["conflicts_made"] += 1
        central.close()
        say(f"conflicts made on {self.sync['conflicts_made']} records ({len(answered)} answered; "
            f"edge-1's records {store.counts()})")

    def resolve_held(self) -> None:
        """The operator settles what ``manual`` held, with the CLI (the central version stays)."""
        for held in CentralExecutions(self.work / "central.db").open_conflicts():
            subprocess.run([sys.executable, "-m", "deploy.cli", "sync", "resolve", held["entity"], held["entity_id"],
                            "--keep", "central", "--store", str(self.work / "central.db"), "--bootstrap",
                            self.broker.bootstrap, "--signing-key", str(self.work.parent / "keys" / PRIVATE)],
                           cwd=ROOT, capture_output=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})

    def wait_answered(self, worker: EdgeWorker, timeout_s: float = 40.0) -> None:
        stores = [n.sync.store for n in worker.nodes.values() if n.sync is not None]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(set(s.counts()) & {"pending", "queued", "sent"} for s in stores):
            time.sleep(0.2)

    def collect_sync(self, worker: EdgeWorker) -> None:
        for node in worker.nodes.values():
            if node.sync is not None:
                self.sync["answers"].update(node.sync.answers)
                self.sync["round_trips_ms"] += node.sync.round_trips_ms

    def worker(self) -> EdgeWorker:
        speed = self.args.speed
        worker = EdgeWorker(self.settings, TOPICS, ["edge-1", "edge-2"], Scenario("thermal-event", SCENARIO_S),
                            zoo_dir=self.args.zoo, sensor="thermal", rate=self.args.rate, interval_s=1.0 / speed,
                            time_scale=speed, scenarios={"edge-2": Scenario("steady", SCENARIO_S)},
                            seed=self.args.seed, keyring=self.work.parent / "keys" / KEYRING,
                            outbox_path=self.work / "outbox.db", local_policy=self.policy,
                            silent_after_s=self.args.silent_after, workflow="inspection", workflow_gap_s=1.0,
                            workflow_seed=self.args.seed)
        put, on_delivered = worker.outbox.put, worker.outbox.on_delivered

        def recording_put(topic, key, value, priority, rid, wait=False):
            self.written.append(rid)
            return put(topic, key, value, priority, rid, wait)

        def recording_delivered(rid):
            self.delivered.setdefault(rid, time.monotonic())
            on_delivered(rid)

        worker.outbox.put, worker.outbox.on_delivered = recording_put, recording_delivered
        for node in worker.nodes.values():
            node.sync.resend_after_s = self.args.sync_resend_s
        return worker

    def execute(self) -> dict:
        speed, t0 = self.args.speed, time.monotonic()
        worker = self.worker().start()
        self.events["start_ms"] = time.time() * 1000
        down_at = SCENARIO_S * FAN_FAILS / speed - 4.0
        wall_s = RUN_S / speed
        if self.outage:
            time.sleep(max(0.0, down_at - (time.monotonic() - t0)))
            worker = self.outage_with_restart(worker)
        else:
            # When the outage run has its link back: the node has had time to have runs answered
            # (its first runs wait for the inspection lots to be generated).
            time.sleep(max(0.0, down_at + self.args.outage_s - (time.monotonic() - t0)))
            self.make_conflicts(worker)
        time.sleep(max(0.0, wall_s - (time.monotonic() - t0)))
        self.inject_commands(worker)
        time.sleep(3.0)
        worker.outbox.flush(30)
        self.resolve_held()
        self.wait_answered(worker)
        self.collect_sync(worker)
        counts = Counter()
        for node in worker.nodes.values():
            counts.update(node.sync.store.counts())
        self.sync["status_counts"] = dict(counts)
        self.sync["conflicts"] = CentralExecutions(self.work / "central.db").conflict_counts()
        worker.stop()
        self.local_acks += [a for n in worker.nodes.values() for _, a in n.applied if a.get("origin") == "local"]
        time.sleep(1.0)
        for c in self.collectors:
            c.stop()
        for flow in (self.flow, self.sync_flow):
            flow.terminate()
            flow.wait(10)
        self.broker.stop()
        return self.summary()

    def outage_with_restart(self, worker: EdgeWorker) -> EdgeWorker:
        deadline = time.monotonic() + 5  # kill when the collector has everything, in a quiet moment
        while time.monotonic() < deadline and not (set(self.delivered) <= self.collectors[0].ids()
                                                   and time.monotonic() - max(self.delivered.values()) > 0.05):
            time.sleep(0.002)
        self.events["caught_up"] = time.monotonic()
        self.broker.stop()
        self.events["down"], self.events["down_ms"] = time.monotonic(), time.time() * 1000
        self.collectors[0].stop()
        self.flow.terminate()
        self.sync_flow.terminate()
        self.make_conflicts(worker)   # the node audits runs offline that an operator reviews centrally
        say(f"broker stopped; down for {self.args.outage_s:.0f} s; the worker restarts in the middle")
        time.sleep(self.args.outage_s / 2)
        worker.stop(flush_timeout_s=0)
        self.collect_sync(worker)
        self.local_acks += [a for n in worker.nodes.values() for _, a in n.applied if a.get("origin") == "local"]
        self.pre_restart_commands = [raw for s, _, raw in self.collectors[0].records if s == "MorphCommand"]
        restarted = self.worker()
        for node_id, node in restarted.nodes.items():
            # The node itself did not restart, only the worker process: its (simulated) die keeps
            # its temperature and the scenario goes on where it was.
            node.sensor = worker.nodes[node_id].sensor
        worker = restarted.start(ready_timeout_s=0.2)
        time.sleep(max(0.0, self.events["down"] + self.args.outage_s - time.monotonic()))
        self.events["backlog"] = worker.outbox.pending()
        self.broker = EmbeddedBroker(port=self.broker.port, log_path=self.work / "broker2.log").start()
        self.events["up"], self.events["up_ms"] = time.monotonic(), time.time() * 1000
        ensure_topics(self.settings, TOPICS.all(), partitions=2)
        self.collectors.append(TopicCollector(self.settings, WATCHED, "bench-outage"))
        self.collectors[-1].start()
        self.flow = self.start_flow()
        self.sync_flow = self.start_sync_flow()
        say(f"broker back after {self.events['up'] - self.events['down']:.1f} s; backlog {self.events['backlog']}")
        return worker

    def inject_commands(self, worker: EdgeWorker) -> None:
        """A replayed, a forged and an unsigned command for edge-1, beside the real ones."""
        codec = Codec()
        raws = [raw for s, r, raw in self.collectors[-1].records if s == "MorphCommand"]
        raws += getattr(self, "pre_restart_commands", [])  # after a restart: replays of what it saw before
        producer = Producer(self.settings.producer())
        self.injected = {"replayed": [], "forged": [], "unsigned": []}
        for raw in raws[-2:]:
            original = codec.decode(raw).record
            producer.produce(TOPICS.commands, key=original["node_id"].encode(), value=raw)
            self.injected["replayed"].append(original["command_id"])
            forged = {**original, "command_id": original["command_id"] + "-forged", "to_variant": "transformer",
                      "to_precision": "fp32"}
            producer.produce(TOPICS.commands, key=b"edge-1", value=codec.encode("MorphCommand", forged))
            self.injected["forged"].append(forged["command_id"])
            unsigned = {k: v for k, v in forged.items() if k != "signature"}
            unsigned["command_id"] = original["command_id"] + "-unsigned"
            producer.produce(TOPICS.commands, key=b"edge-1", value=codec.encode("MorphCommand", unsigned))
            self.injected["unsigned"].append(unsigned["command_id"])
        producer.flush(10)

    def summary(self) -> dict:
        read = [(s, r) for c in self.collectors for s, r, _ in c.records]
        return {"read": read, "written": list(self.written), "delivered": dict(self.delivered),
                "events": dict(self.events), "local_acks": list(self.local_acks), "injected": self.injected,
                "sync": self.sync}


def accepted_injections(run: dict) -> dict[str, int]:
    acks = [r for s, r in run["read"] if s == "CommandAck"]
    applied = lambda cid: sum(1 for a in acks if a["command_id"] == cid and a["status"] == "APPLIED")
    return {"replayed": sum(max(0, applied(c) - 1) for c in run["injected"]["replayed"]),
            "forged": sum(applied(c) for c in run["injected"]["forged"]),
            "unsigned": sum(applied(c) for c in run["injected"]["unsigned"])}


def double_counted(read: list) -> int:
    """Records taken in more than once by the control step, the fingerprint and the central execution
    store (fed everything read, redeliveries included)."""
    from fingerprint.temporal import Fingerprint
    from operators.control import MorphStep
    from operators.events import Event

    step, states, taken = MorphStep(MorphPolicy()), {}, 0
    for schema, record in read:
        if schema in ("Telemetry", "CommandAck"):
            node = record["node_id"]
            before = states[node].duplicates if node in states else 0
            states[node], _ = step(states.get(node), Event(schema, record, "bench", 0, 0))
            taken += states[node].duplicates == before
    control = {record_id(r) for s, r in read if s in ("Telemetry", "CommandAck")}
    fingerprints: dict[str, Fingerprint] = {}
    signals = [r for s, r in read if s == "WorkflowSignal"]
    for signal in signals:
        fingerprints.setdefault(signal["workflow_id"], Fingerprint(signal["workflow_id"])).learn_one(signal)
    accepted = sum(f.accepted for f in fingerprints.values())
    with tempfile.TemporaryDirectory() as d:
        central = CentralExecutions(Path(d) / "central.db")
        executions = [r for s, r in read if s == "ExecutionRecord"]
        applied = sum(central.apply(r) != "duplicate" for r in executions)
    return (taken - len(control)) + (accepted - len({s["signal_id"] for s in signals})) \
        + (applied - len({r["record_id"] for r in executions}))


def max_temp(read: list, start_ms: float, end_ms: float) -> float:
    temps = [r["gpu_temp_c"] for s, r in read
             if s == "Telemetry" and r["node_id"] == "edge-1" and start_ms <= r["ts_ms"] <= end_ms]
    return max(temps) if temps else float("nan")


#: How often the outbox commits, in the cost measurement: (name, records a commit, synchronous, share of n).
COMMIT_MODES = (("grouped", 64, "NORMAL", 1.0),       # the drain thread's group commit under a backlog; a sync batch
                ("tick", 2, "NORMAL", 0.25),          # one telemetry tick of the bench's two nodes
                ("each", 1, "NORMAL", 0.25),          # put(wait=True): durable before put returns
                ("grouped_full", 64, "FULL", 0.25),   # an fsync per commit: power-loss safe
                ("each_full", 1, "FULL", 0.05))


def outbox_write_cost(repeats: int = 7, n: int = 4000) -> dict[str, float]:
    """µs per record writing into the outbox, the median of ``repeats`` repetitions (fresh file each), wall
    and CPU (this process's), for each `COMMIT_MODES` entry; the caller's share alone (``put``); and the
    baseline: librdkafka's ``produce()`` into its memory queue, what the worker paid before the outbox.

    What is on disk when: ``put`` stages the record in memory; a commit appends the staged records to
    the WAL in one transaction (``write()``, no fsync with ``synchronous=NORMAL``: durable against a crash
    of the worker process, which is what a restart is; with ``FULL`` the WAL is fsynced at every commit,
    durable against power loss). SQLite fsyncs the WAL before each checkpoint in both modes."""
    codec, now = Codec(), int(time.time() * 1000)
    sample = {"node_id": "edge-1", "ts_ms": now, "seq": 1, "gpu_temp_c": 80.0, "gpu_util": 0.9, "mem_used_frac": 0.4,
              "power_w": 250.0, "power_cap_w": 350.0, "latency_ms": 5.0, "throughput_rps": 100.0,
              "variant": "cnn", "precision": "fp32", "batch_size": 16, "source": "thermal-model",
              "scenario": "thermal-event", "record_id": "edge-1-x-1"}
    value = codec.encode("Telemetry", sample)
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, *_ in COMMIT_MODES}
    for _ in range(repeats):
        for name, every, synchronous, share in COMMIT_MODES:
            count = max(every, int(n * share))
            with tempfile.TemporaryDirectory() as d:
                box = Outbox(Path(d) / "o.db", synchronous=synchronous)
                put_s, t, cpu = 0.0, time.perf_counter(), time.process_time()
                for i in range(count):
                    a = time.perf_counter()
                    box.put(TOPICS.telemetry, b"edge-1", value, TELEMETRY, f"edge-1-x-{i}")
                    put_s += time.perf_counter() - a
                    if i % every == every - 1:
                        box.commit()
                box.commit()
                runs[name].append(((time.perf_counter() - t) / count * 1e6, (time.process_time() - cpu) / count * 1e6,
                                   put_s / count * 1e6))
                box.close()
    figures = {"repeats": repeats}
    for name, values in runs.items():
        figures[name] = statistics.median(v[0] for v in values)
        figures[f"{name}_cpu"] = statistics.median(v[1] for v in values)
        figures[f"{name}_put"] = statistics.median(v[2] for v in values)
        figures[f"{name}_range"] = [round(min(v[0] for v in values), 2), round(max(v[0] for v in values), 2)]
    produce = []
    for _ in range(repeats):
        producer = Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": "0",
                             "queue.buffering.max.messages": n + 1})
        t = time.perf_counter()
        for i in range(n):
            producer.produce(TOPICS.telemetry, key=b"edge-1", value=value)
        produce.append((time.perf_counter() - t) / n * 1e6)
        producer.purge()
    figures["produce"] = statistics.median(produce)
    return figures


def drain_rate(run: dict) -> tuple[float, float]:
    """(records/s delivered after the broker came back, records/s produced during the outage)."""
    up, down = run["events"]["up"], run["events"]["down"]
    produced = run["events"]["backlog"] / (up - down)
    after = sorted(t for t in run["delivered"].values() if t >= up)
    backlog = run["events"]["backlog"]
    if len(after) < max(2, backlog):
        return float("nan"), produced
    window = after[backlog - 1] - after[0]
    return (backlog - 1) / window if window > 0 else float("inf"), produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed", type=float, default=2.0, help="scenario seconds per wall second (default 2)")
    parser.add_argument("--outage-s", type=float, default=30.0, help="wall seconds the broker is down (default 30)")
    parser.add_argument("--silent-after", type=float, default=3.0,
                        help="wall seconds of silence before the node decides itself (default 3)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s each node serves (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the nodes and the workflow lots")
    parser.add_argument("--zoo", type=Path, help="model zoo directory (default: the built-in cache)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="repetitions of the outbox write-cost measurement; the median is reported (default 7)")
    parser.add_argument("--sync-resend-s", type=float, default=10.0,
                        help="seconds a node waits for the central answer to a synced record before sending it "
                             "again (default 10; the worker's default is 60)")
    args = parser.parse_args()
    from morph.zoo import load_manifest

    args.zoo = load_manifest(args.zoo).root
    with tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp:
        work = Path(tmp)
        generate_keys(work / "keys")
        cost = outbox_write_cost(args.repeats)
        say(f"outbox write, median of {args.repeats}: {cost['grouped']:.1f} µs/record (64 a commit), "
            f"{cost['tick']:.1f} (2 a commit), {cost['each']:.1f} (one a commit), {cost['each_full']:.1f} "
            f"(one a commit, fsync); librdkafka produce() {cost['produce']:.1f} µs/record")
        results = {}
        for name, outage in (("connected", False), ("outage", True)):
            (work / name).mkdir()
            say(f"run {name}: about {RUN_S / args.speed + (5 if outage else 0):.0f} s")
            results[name] = Run(args, work / name, outage).execute()
    report(args, results, cost)


def sync_figures(con: dict, out: dict) -> dict:
    """Execution records synced through the sync flow, conflicts by strategy, node → central → node latency."""
    def percentile(values, q):
        return round(statistics.quantiles(values, n=100)[q - 1], 1) if len(values) >= 2 else None

    answered = lambda run: sum(run["sync"]["answers"].values())
    unanswered = lambda run: sum(v for k, v in run["sync"]["status_counts"].items()
                                 if k in ("pending", "queued", "sent"))
    conflicts = Counter()
    for run in (con, out):
        conflicts.update(run["sync"]["conflicts"])
    return {
        "sync_records_answered": answered(con) + answered(out),
        "sync_answers": dict(con["sync"]["answers"] + out["sync"]["answers"]),
        "sync_records_unanswered": unanswered(con) + unanswered(out),
        "sync_conflicts_made": con["sync"]["conflicts_made"] + out["sync"]["conflicts_made"],
        "sync_conflicts_by_strategy": dict(sorted(conflicts.items())),
        "sync_round_trip_ms_p50": percentile(con["sync"]["round_trips_ms"], 50),
        "sync_round_trip_ms_p95": percentile(con["sync"]["round_trips_ms"], 95),
        "sync_round_trip_ms_p50_outage_run": percentile(out["sync"]["round_trips_ms"], 50),
        "sync_round_trip_ms_max_outage_run": round(max(out["sync"]["round_trips_ms"], default=float("nan")), 1),
    }


def report(args, results: dict, cost: dict) -> None:
    con, out = results["connected"], results["outage"]
    ev = out["events"]
    read_ids = {record_id(r) for s, r in out["read"] if s != "MorphCommand"}
    lost = set(out["written"]) - read_ids
    taken = {rid for rid in lost if ev["caught_up"] <= out["delivered"].get(rid, -1) <= ev["down"] + 0.05}
    fan_ms = lambda run: run["events"]["start_ms"] + SCENARIO_S * FAN_FAILS / args.speed * 1000
    window_ms = ev["up_ms"] - fan_ms(out)
    if lost:
        sample = sorted(lost)[:8]
        say(f"lost {len(lost)}: e.g. {sample}; delivered {sum(1 for r in lost if r in out['delivered'])}, "
            f"delivered after the broker came back {sum(1 for r in lost if out['delivered'].get(r, -1) >= ev['up'])}")
    t_out = max_temp(out["read"], fan_ms(out), ev["up_ms"])
    t_con = max_temp(con["read"], fan_ms(con), fan_ms(con) + window_ms)
    drain, produced = drain_rate(out)
    injected = {k: accepted_injections(con)[k] + accepted_injections(out)[k] for k in ("replayed", "forged", "unsigned")}
    figures = {
        "records_produced": len(set(out["written"])), "records_lost": len(lost),
        "records_lost_with_dead_broker": len(taken), "records_double_counted": double_counted(out["read"]),
        "records_redelivered": len(out["read"]) - len({(s, record_id(r)) for s, r in out["read"]}),
        "outage_s": round(ev["up"] - ev["down"], 2), "local_decisions": len(out["local_acks"]),
        "local_decision_path": [f"{a['from_variant']}->{a['to_variant']}" for a in out["local_acks"]],
        "max_temp_c_outage": round(t_out, 2), "max_temp_c_connected": round(t_con, 2),
        "outbox_us_per_record": round(cost["grouped"], 2), "outbox_put_us_per_record": round(cost["grouped_put"], 2),
        "outbox_cpu_us_per_record": round(cost["grouped_cpu"], 2),
        "outbox_us_per_record_range": cost["grouped_range"], "outbox_repeats": cost["repeats"],
        "outbox_us_per_record_two_per_commit": round(cost["tick"], 2),
        "outbox_us_per_record_one_per_commit": round(cost["each"], 2),
        "outbox_cpu_us_per_record_one_per_commit": round(cost["each_cpu"], 2),
        "outbox_us_per_record_fsync_grouped": round(cost["grouped_full"], 2),
        "outbox_us_per_record_fsync_one_per_commit": round(cost["each_full"], 2),
        "outbox_core_share_at_production_one_per_commit": round(produced * cost["each"] / 1e6, 5),
        "produce_us_per_record_baseline": round(cost["produce"], 2),
        "outbox_vs_produce_ratio": round(cost["grouped"] / cost["produce"], 2),
        "drain_records_per_s": round(drain, 1), "production_records_per_s": round(produced, 2),
        "drain_vs_production_ratio": round(drain / produced, 1) if produced else None,
        "backlog_records": ev["backlog"],
        "forged_commands_accepted": injected["forged"], "replayed_commands_accepted": injected["replayed"],
        "unsigned_commands_accepted": injected["unsigned"],
        "commands_injected": sum(len(v) for r in (con, out) for v in r["injected"].values()),
        **sync_figures(con, out),
        "speed": args.speed, "seed": args.seed, "machine": "2 cores shared, loaded (timings noisy)",
    }
    for key, value in figures.items():
        print(f"{key:34s} {value}")
    emit_result(figures)


if __name__ == "__main__":
    main()
