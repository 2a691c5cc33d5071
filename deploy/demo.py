"""``liquid demo``: the seed's Figure 2, live through Kafka, on real models.

Starts the embedded broker, creates the topics, builds the model zoo if it is
missing, runs the control flow (a Bytewax process) and an edge worker with two
nodes: ``edge-1`` goes through the thermal event (hot air, then a failing fan),
``edge-2`` runs steady beside it. A live view shows each node's temperature,
variant, precision, throughput and last decision. It ends by itself and writes
``timeline.png`` (temperature, variant and throughput over time) and
``summary.json`` (throughput per phase, each adaptation's latency, requests
served and dropped, swaps, accuracy of every variant used).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import UsageError
from edge.thermal import Scenario
from morph.ladder import VARIANTS
from morph.policy import PolicyConfig

SCENARIO_S = 150.0          # length of the thermal event, in scenario seconds
RUN_S = 165.0               # scenario seconds the demo runs (recovery ends by ~140 s)
#: Phases of the thermal event as fractions of its length (see edge.thermal).
PHASES = (("normal", 0.0, 0.08), ("heat wave", 0.08, 0.4), ("fan failure", 0.4, 0.58),
          ("cooling", 0.58, 0.75), ("recovered", 0.75, 10.0))


@dataclass
class Monitor:
    """Reads telemetry, commands and acks back from Kafka, as an operator's dashboard would."""

    settings: object
    topics: object
    telemetry: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    acks: list = field(default_factory=list)
    alerts: list = field(default_factory=list)

    def __post_init__(self):
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="monitor")

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        time.sleep(0.5)
        self._halt.set()
        self._thread.join(5)

    def _run(self):
        from confluent_kafka import Consumer, TopicPartition

        from schemas.codec import Codec, DecodeError

        codec = Codec()
        consumer = Consumer(self.settings.consumer("liquid-demo-monitor"))
        sinks = {self.topics.telemetry: self.telemetry, self.topics.commands: self.commands,
                 self.topics.acks: self.acks, self.topics.alerts: self.alerts}
        parts = []
        for topic in sinks:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p, 0) for p in meta.partitions]
        consumer.assign(parts)
        while not self._halt.is_set():
            for msg in consumer.consume(500, timeout=0.1):
                if msg.error() is None:
                    try:
                        sinks[msg.topic()].append(codec.decode(msg.value()).record)
                    except DecodeError:
                        pass
        consumer.close()


def render(monitor: Monitor, worker, elapsed_s: float, speed: float) -> str:
    lines = [f"Liquid Workflow demo — scenario t={elapsed_s * speed:5.0f} s of {RUN_S:.0f} "
             f"(x{speed:g}); commands {len(monitor.commands)}, acks {len(monitor.acks)}",
             f"{'node':<8}{'temp °C':>8}  {'variant':<12}{'prec':<6}{'batch':>5}{'req/s':>7}{'lat ms':>8}"
             f"{'served':>8}{'dropped':>8}  last decision"]
    for node_id, node in worker.nodes.items():
        t = worker.last_telemetry.get(node_id)
        if t is None:
            continue
        stats = node.load.stats()
        last = next((c for c in reversed(monitor.commands) if c["node_id"] == node_id), None)
        why = f"{last['trigger']}: {last['reason']}" if last else "-"
        lines.append(f"{node_id:<8}{t['gpu_temp_c']:>8.1f}  {t['variant']:<12}{t['precision']:<6}{t['batch_size']:>5}"
                     f"{t['throughput_rps']:>7.0f}{t['latency_ms']:>8.2f}{stats.served:>8}{stats.dropped:>8}  {why[:90]}")
    return "\n".join(lines)


def summarise(monitor: Monitor, worker_stats: dict, histories: dict, manifest, policy: PolicyConfig,
              start_ms: int, speed: float) -> dict:
    """The numbers behind the demo: per phase throughput, adaptation latencies, requests, accuracy."""
    summary = {"scenario": "thermal-event", "speed": speed, "nodes": {}}
    for node_id, stats in worker_stats.items():
        tele = sorted((t for t in monitor.telemetry if t["node_id"] == node_id), key=lambda t: t["ts_ms"])
        acks = {a["command_id"]: a for a in monitor.acks if a["node_id"] == node_id}
        cmds = [c for c in monitor.commands if c["node_id"] == node_id]
        phases = {}
        for name, lo, hi in PHASES:
            secs = [h for h in histories[node_id] if lo <= h.second * speed / SCENARIO_S < hi]
            if secs:
                served = [h.served for h in secs]
                phases[name] = {"seconds": len(secs), "mean_rps": round(sum(served) / len(secs), 1),
                                "min_rps": min(served), "dropped": sum(h.dropped for h in secs)}
        adaptations, sequence = [], ["transformer"]
        for c in cmds:
            ack = acks.get(c["command_id"])
            entry = {"command_id": c["command_id"], "trigger": c["trigger"], "from": c["from_variant"],
                     "to": c["to_variant"], "precision": c["to_precision"], "reason": c["reason"],
                     "status": ack["status"] if ack else "NO_ACK"}
            if ack:
                entry["decision_to_applied_ms"] = ack["ts_ms"] - c["decided_on_ts_ms"]
                entry["swap_ms"] = ack["swap_ms"]
                crossing = _crossing(tele, c, policy)
                if crossing is not None:
                    entry["threshold_crossing_to_applied_ms"] = ack["ts_ms"] - crossing
            adaptations.append(entry)
            if c["to_variant"] != sequence[-1] and entry["status"] == "APPLIED":
                sequence.append(c["to_variant"])
        accuracy = {f"{v}/{p}": {"live_accuracy": round(m.accuracy, 4), "served": m.served,
                                 "zoo_test_accuracy": manifest.entry(v, p).accuracy}
                    for (v, p), m in stats.per_model.items()}
        summary["nodes"][node_id] = {
            "requests_submitted": stats.submitted, "requests_served": stats.served,
            "requests_dropped": stats.dropped, "swaps": sum(1 for a in adaptations if a["status"] == "APPLIED"
                                                            and a["from"] != a["to"]),
            "variant_sequence": sequence, "max_temp_c": max((t["gpu_temp_c"] for t in tele), default=None),
            "throughput_by_phase": phases, "adaptations": adaptations, "accuracy_by_variant": accuracy,
        }
    return summary


def _crossing(tele: list, command: dict, policy: PolicyConfig):
    """Event time of the first sample of the run of samples that led to this command."""
    decided = command["decided_on_ts_ms"]
    before = [t for t in tele if t["ts_ms"] <= decided]
    if command["trigger"] == "RECOVERY":
        test = lambda t: t["gpu_temp_c"] <= policy.recover_c  # noqa: E731
    elif command["trigger"] == "CRITICAL":
        test = lambda t: t["gpu_temp_c"] >= policy.critical_c  # noqa: E731
    elif command["trigger"] == "THRESHOLD":
        test = lambda t: t["gpu_temp_c"] >= policy.hot_c  # noqa: E731
    else:
        return None
    first = None
    for t in reversed(before):
        if not test(t):
            break
        first = t["ts_ms"]
    return first


def plot(monitor: Monitor, histories: dict, summary: dict, path: Path, start_ms: int, speed: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_v, ax_r) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    colours = {"edge-1": "tab:red", "edge-2": "tab:blue"}
    for node_id in histories:
        tele = sorted((t for t in monitor.telemetry if t["node_id"] == node_id), key=lambda t: t["ts_ms"])
        xs = [(t["ts_ms"] - start_ms) / 1000 * speed for t in tele]
        c = colours.get(node_id, None)
        ax_t.plot(xs, [t["gpu_temp_c"] for t in tele], color=c, label=node_id)
        ax_v.step(xs, [VARIANTS.index(t["variant"]) for t in tele], where="post", color=c, label=node_id)
        h = histories[node_id]
        ax_r.plot([s.second * speed for s in h], [s.served for s in h], color=c, label=node_id)
        for cmd in (x for x in monitor.commands if x["node_id"] == node_id and x["to_variant"] != x["from_variant"]):
            ax_v.axvline((cmd["decided_on_ts_ms"] - start_ms) / 1000 * speed, color=c, alpha=0.25, lw=0.8)
    for y, label in ((85, "85 °C: step down"), (90, "90 °C: jump to snn")):
        ax_t.axhline(y, ls="--", color="grey", lw=0.8)
        ax_t.text(1, y + 0.5, label, fontsize=8, color="grey")
    ax_t.set_ylabel("temperature °C")
    ax_v.set_yticks(range(len(VARIANTS)), VARIANTS)
    ax_v.invert_yaxis()
    ax_v.set_ylabel("variant serving")
    ax_r.set_ylabel("requests served / s")
    ax_r.set_xlabel("scenario time (s)")
    ax_r.set_ylim(bottom=0)
    for ax in (ax_t, ax_v, ax_r):
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    n1 = summary["nodes"].get("edge-1", {})
    fig.suptitle("Thermal event, measured: " + " → ".join(n1.get("variant_sequence", [])) +
                 f"  (dropped {n1.get('requests_dropped', '?')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out_dir: Path, speed: float = 1.5, rate: float = 100.0, zoo_dir=None, say=print,
             live: bool = True, stop: threading.Event | None = None, signing: bool = True) -> dict:
    from deploy.broker import EmbeddedBroker
    from deploy.topics import ensure_topics
    from edge.worker import EdgeWorker
    from morph.zoo import build_zoo, load_manifest
    from schemas import TopicNames
    from schemas.kafka import KafkaSettings

    out_dir.mkdir(parents=True, exist_ok=True)
    # A zoo the caller names is used as it is (whatever its profile); the default one is built if missing.
    manifest = load_manifest(zoo_dir) if zoo_dir else build_zoo(progress=say)
    policy = PolicyConfig().scaled(speed)
    keyring = None
    if signing:  # commands are signed by the control flow and checked by the worker
        from deploy.keys_cmd import KEYRING, PRIVATE, generate_keys

        generate_keys(out_dir / "keys", force=True)
        keyring = out_dir / "keys" / KEYRING
    with EmbeddedBroker(log_path=out_dir / "broker.log") as broker:
        settings, topics = KafkaSettings(broker.bootstrap), TopicNames()
        ensure_topics(settings, topics.all(), partitions=2)
        say(f"broker at {broker.bootstrap}; topics ready; starting the control flow and the worker")
        flow_cmd = [sys.executable, "-m", "deploy.cli", "flow", "run", "control", "--bootstrap", broker.bootstrap,
                    "--zoo", str(manifest.root), "--start", "end"]
        for key in ("cooldown_s", "recover_cooldown_s", "pending_timeout_s"):
            flow_cmd += ["--policy", f"{key}={getattr(policy, key)}"]
        if signing:
            flow_cmd += ["--signing-key", str(out_dir / "keys" / PRIVATE)]
        flow = subprocess.Popen(flow_cmd, stdout=open(out_dir / "flow.log", "w"), stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        monitor = Monitor(settings, topics).start()
        worker = None
        try:
            time.sleep(2.0)  # the flow assigns its partitions (at their end) before telemetry flows
            if flow.poll() is not None:
                raise RuntimeError(f"the control flow exited at start: see {out_dir / 'flow.log'}")
            # The GPU-like power profile: with the zoo's measured cost (the worker's default) and
            # edge.thermal.MEASURED_COST_EVENT the walk holds in simulation but not yet live (see README).
            worker = EdgeWorker(settings, topics, ["edge-1", "edge-2"], Scenario("thermal-event", SCENARIO_S),
                                power_profile="gpu",
                                zoo_dir=manifest.root, sensor="thermal", rate=rate, interval_s=1.0 / speed,
                                time_scale=speed, scenarios={"edge-2": Scenario("steady", SCENARIO_S)},
                                keyring=keyring, outbox_path=out_dir / "outbox.db", local_policy=policy)
            start_ms = int(time.time() * 1000)
            worker.start()
            t0 = time.monotonic()
            last_line = 0.0
            tty = live and sys.stdout.isatty()
            while (elapsed := time.monotonic() - t0) < RUN_S / speed:
                if stop is not None and stop.is_set():
                    say("stopping early (interrupted)")
                    break
                if tty:
                    sys.stdout.write("\x1b[2J\x1b[H" + render(monitor, worker, elapsed, speed) + "\n")
                    sys.stdout.flush()
                elif live and elapsed - last_line >= 5.0:
                    last_line = elapsed
                    say(render(monitor, worker, elapsed, speed))
                time.sleep(1.0 if tty else 0.2)
            histories = {n: node.load.history() for n, node in worker.nodes.items()}
            stats = worker.stop()
            worker = None
        finally:
            if worker is not None:
                worker.stop()
            monitor.stop()
            flow.terminate()
            try:
                flow.wait(10)
            except subprocess.TimeoutExpired:
                flow.kill()
    summary = summarise(monitor, stats, histories, manifest, policy, start_ms, speed)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(monitor, histories, summary, out_dir / "timeline.png", start_ms, speed)
    return summary


def _run(args) -> int:
    import signal

    if args.speed <= 0 or args.rate <= 0:
        raise UsageError("--speed and --rate must be positive")
    speed = 5.0 if args.short else args.speed
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say = lambda m: print(m, flush=True)  # noqa: E731
    say(f"Liquid Workflow demo: thermal event at x{speed:g} speed, about {RUN_S / speed:.0f} s; Ctrl-C ends it early")
    from morph.zoo import ZooMissingError

    try:
        summary = run_demo(args.out, speed=speed, rate=args.rate, zoo_dir=args.zoo, say=say, stop=stop,
                           signing=not args.unsigned)
    except ZooMissingError as err:
        raise UsageError(str(err)) from None
    n1 = summary["nodes"]["edge-1"]
    lat = [a["decision_to_applied_ms"] for a in n1["adaptations"] if "decision_to_applied_ms" in a]
    say("")
    say(f"edge-1 variants: {' -> '.join(n1['variant_sequence'])}")
    for name, p in n1["throughput_by_phase"].items():
        say(f"  {name:<12} {p['mean_rps']:7.1f} req/s (min {p['min_rps']:.0f}), dropped {p['dropped']}")
    if lat:
        say(f"  decision -> applied: median {sorted(lat)[len(lat) // 2]} ms, max {max(lat)} ms over {len(lat)} commands")
    total_served = sum(n["requests_served"] for n in summary["nodes"].values())
    total_dropped = sum(n["requests_dropped"] for n in summary["nodes"].values())
    say(f"requests served {total_served}, dropped {total_dropped}; wrote {args.out / 'timeline.png'} and "
        f"{args.out / 'summary.json'}")
    return 0


def register(tree) -> None:
    p = tree.command("demo", "the live thermal demo: broker, control flow and two worker nodes on real models", _run,
                     description=__doc__)
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where to write the plot and summary "
                                                                     "(default %(default)s)")
    p.add_argument("--speed", type=float, default=1.5,
                   help="scenario seconds per wall-clock second (default %(default)s: about 2 minutes)")
    p.add_argument("--short", action="store_true", help="run at x5 speed (about 35 s), for tests and a quick look")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s each node serves (default %(default)s)")
    p.add_argument("--zoo", help="model zoo directory, used as it is (default: the built-in cache, built if missing)")
    p.add_argument("--unsigned", action="store_true",
                   help="commands unsigned (default: the control flow signs them with a key made in OUT/keys, "
                        "and the worker rejects any command that does not verify)")
