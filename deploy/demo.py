"""``liquid demo``: the seed's Figure 2, live through Kafka, on real models.

Starts the embedded broker, creates the topics, builds the model zoo if it is
missing, runs the control flow (a Bytewax process) and an edge worker with two
nodes: ``edge-1`` goes through the thermal event (hot air, then a failing fan),
``edge-2`` runs steady beside it. A live view shows each node's temperature,
variant, precision, throughput and last decision. It ends by itself and writes
``timeline.png`` (temperature, variant and throughput over time) and
``summary.json`` (throughput per phase, each adaptation's latency, requests
served and dropped, swaps, accuracy of every variant used).

What it runs is an AdaptiveWorkflow resource: ``deploy/examples/demo.yaml`` by
default, another one with ``--spec FILE``. Its constraints and adaptation
settings drive the policy (the control flow's and the nodes' local one); the
demo replaces its Kafka address with the embedded broker's and divides its
cool-downs by ``--speed``.

The nodes' power per variant is the zoo's measured CPU time per inference relative to the
transformer's (``--power-profile cpu``, the default; ``flops`` uses FLOPs) under the thermal event
stated for such a node (`edge.thermal.MEASURED_COST_EVENT`); ``--power-profile gpu`` runs the
GPU-like profile and its own event.

``--policy rli`` lets the learned agent decide instead of the rules. Its
trade-off only shows under a load some variants cannot serve, so by default
the rli demo first measures what each variant serves on this machine and offers
80 % of the cnn's capacity (the transformer and lstm fall behind, the lighter
variants keep up). Both policies report, per node, the maximum temperature, the
seconds above 85 and 90 °C, the energy per inference, the accuracy served, the
seconds that broke the workflow's SLO and the reward the agent optimises
(`morph.reward`, measured from the telemetry over 10 s windows); the timeline
gains accuracy, power / energy and reward panels.
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
from edge.thermal import POWER_PROFILES, Scenario, thermal_event
from morph.agent import RliConfig
from morph.ladder import VARIANTS
from morph.policy import PolicyConfig

DEMO_SPEC = Path(__file__).with_name("examples") / "demo.yaml"
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
                     "status": ack["status"] if ack else "NO_ACK", "propensity": c.get("propensity")}
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
            "variant_sequence": sequence,
            "throughput_by_phase": phases, "adaptations": adaptations, "accuracy_by_variant": accuracy,
            **outcome_figures(tele, stats, speed),
        }
    return summary


REWARD_WINDOW_S = 10.0      # scenario seconds per reward window (the agent's decision epoch)


def outcome_figures(tele: list, stats, speed: float) -> dict:
    """What the node went through, for comparing policies: temperatures, energy, accuracy, SLO, reward."""
    from morph.reward import RewardWeights, WorkflowConstraints

    c = WorkflowConstraints()
    served = sum(t["throughput_rps"] for t in tele)
    slo = sum(1 for t in tele if t["latency_ms"] > c.max_latency_ms
              or (t.get("accuracy") is not None and t["accuracy"] < c.min_accuracy))
    rewards = reward_series(tele, c, RewardWeights(), speed)
    return {
        "max_temp_c": max((t["gpu_temp_c"] for t in tele), default=None),
        # one sample per scenario second (the worker's interval is 1 / speed)
        "seconds_above_85": sum(1 for t in tele if t["gpu_temp_c"] >= 85.0),
        "seconds_above_90": sum(1 for t in tele if t["gpu_temp_c"] >= 90.0),
        "energy_j_per_inference": round(sum(t["power_w"] for t in tele) / served, 5) if served else None,
        "accuracy_served": round(stats.accuracy, 4),
        "slo_violation_seconds": slo,
        "mean_reward": round(sum(r for _, r in rewards) / len(rewards), 4) if rewards else None,
        "reward_by_window": [(round(x, 1), round(r, 4)) for x, r in rewards],
    }


def reward_series(tele: list, constraints, weights, speed: float) -> list[tuple[float, float]]:
    """(scenario second at the window's end, reward) over consecutive windows of REWARD_WINDOW_S."""
    from morph.context import EpochTelemetry
    from morph.reward import reward

    if not tele:
        return []
    out, meter, start = [], EpochTelemetry(), tele[0]["ts_ms"]
    window_ms = REWARD_WINDOW_S / speed * 1000
    edge = start + window_ms
    for t in tele:
        if t["ts_ms"] >= edge and meter.n:
            m = meter.measurement(t.get("accuracy") or 0.0)
            out.append(((edge - start) / 1000 * speed, reward(m, constraints, weights)))
            meter.reset()
            edge += window_ms
        meter.add(t, constraints)
    return out


def calibrate_rate(manifest, say=print, nodes: int = 2, seconds: float = 1.0) -> tuple[float, dict]:
    """(offered load near the lighter variants' capacity, each variant's measured capacity in req/s).

    Each variant serves, on ``nodes`` loads at once as the demo's worker does (fp32, batch 16), more than
    it can keep up with for ``seconds`` on this machine; the demo then offers 80 % of the cnn's capacity."""
    from edge.serving import InferenceServer, RequestLoad

    capacity = {}
    for variant in VARIANTS:
        with InferenceServer(manifest, variant, "fp32") as server:
            loads = [RequestLoad(server, rate=50_000.0, batch_size=16, deadline_ms=60_000) for _ in range(nodes)]
            for load in loads:
                load.start()
            time.sleep(seconds)
            measured = [load.stats().capacity_rps or 0.0 for load in loads]
            for load in loads:
                load.stop()
            capacity[variant] = round(sum(measured) / nodes, 1)
    say("measured capacity (req/s, fp32, batch 16): " + ", ".join(f"{v} {c:.0f}" for v, c in capacity.items()))
    return round(0.8 * capacity["cnn"], 1), capacity


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
    """Temperature, variant, throughput (and the offered load), accuracy, power and energy per inference,
    and the reward, over scenario time, per node."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_v, ax_r, ax_a, ax_p, ax_w) = plt.subplots(6, 1, figsize=(11, 14), sharex=True)
    ax_e = ax_p.twinx()
    colours = {"edge-1": "tab:red", "edge-2": "tab:blue"}
    for node_id in histories:
        tele = sorted((t for t in monitor.telemetry if t["node_id"] == node_id), key=lambda t: t["ts_ms"])
        xs = [(t["ts_ms"] - start_ms) / 1000 * speed for t in tele]
        c = colours.get(node_id, None)
        ax_t.plot(xs, [t["gpu_temp_c"] for t in tele], color=c, label=node_id)
        ax_v.step(xs, [VARIANTS.index(t["variant"]) for t in tele], where="post", color=c, label=node_id)
        h = histories[node_id]
        ax_r.plot([s.second * speed for s in h], [s.served for s in h], color=c, label=node_id)
        offered = [(x, t["offered_rps"]) for x, t in zip(xs, tele) if t.get("offered_rps")]
        if offered:
            ax_r.plot(*zip(*offered), color=c, ls=":", lw=0.9, label=f"{node_id} offered")
        accuracy = [(x, t["accuracy"]) for x, t in zip(xs, tele) if t.get("accuracy") is not None]
        if accuracy:
            ax_a.plot(*zip(*accuracy), color=c, label=node_id)
        ax_p.plot(xs, [t["power_w"] for t in tele], color=c, label=f"{node_id} power")
        energy = [(x, t["energy_j_per_inference"]) for x, t in zip(xs, tele) if t.get("energy_j_per_inference")]
        if energy:
            ax_e.plot(*zip(*energy), color=c, ls="--", lw=0.9, label=f"{node_id} J/inference")
        rewards = summary["nodes"].get(node_id, {}).get("reward_by_window", [])
        if rewards:
            ax_w.step(*zip(*rewards), where="post", color=c, label=node_id)
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
    ax_r.set_ylim(bottom=0)
    ax_a.set_ylabel("accuracy served")
    ax_p.set_ylabel("power W")
    ax_e.set_ylabel("J / inference")
    ax_e.legend(loc="upper left", fontsize=8)
    ax_w.set_ylabel(f"reward ({REWARD_WINDOW_S:.0f} s windows)")
    ax_w.set_xlabel("scenario time (s)")
    for ax in (ax_t, ax_v, ax_r, ax_a, ax_p, ax_w):
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    n1 = summary["nodes"].get("edge-1", {})
    fig.suptitle(f"Thermal event, measured ({summary.get('policy', 'rules')}, {summary.get('rate_rps', '?')} req/s "
                 "offered): " + " → ".join(n1.get("variant_sequence", [])) +
                 f"  (dropped {n1.get('requests_dropped', '?')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_flow_spec(workflow, bootstrap: str, speed: float, zoo_root, signing_key: Path | None,
                   policy_kind: str | None = None):
    """The control flow's `FlowSpec` from the resource, on the demo's broker and clock; and the policy it runs.

    ``policy_kind`` (rules or rli) overrides the resource's ``adaptation.policy``."""
    from dataclasses import replace

    spec = workflow.flow_spec("control")
    policy = PolicyConfig(**spec.policy).scaled(speed)
    timing = {k: getattr(policy, k) for k in ("cooldown_s", "recover_cooldown_s", "pending_timeout_s",
                                              "fallback_hold_s")}
    options = {**spec.options, **({"signing_key": str(signing_key)} if signing_key else {})}
    if policy_kind == "rli":
        options["policy_kind"] = "rli"
    elif policy_kind == "rules":  # the flows' default: no option at all
        options.pop("policy_kind", None)
    if options.get("policy_kind") == "rli":  # the agent's epoch follows the scenario clock, like the cool-downs
        options["rli_epoch_s"] = RliConfig.epoch_s / speed
    return replace(spec, bootstrap=bootstrap, zoo_dir=str(zoo_root), start="end", policy={**spec.policy, **timing},
                   options=options), policy


def start_flow_process(spec, log_path: Path) -> subprocess.Popen:
    """``spec`` in a Bytewax process of its own (one worker), as ``liquid flow run`` would run it."""
    from flows.spec import ENV_VAR

    member = {"workers": 1, "process_id": None, "addresses": None, "recovery_dir": None,
              "snapshot_interval_s": 10.0, "backup_interval_s": 0.0, "metrics_port": None}
    return subprocess.Popen([sys.executable, "-m", "deploy.flowrun", json.dumps(member)],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", ENV_VAR: spec.to_json()})


def run_demo(out_dir: Path, speed: float = 1.5, rate: float | None = None, zoo_dir=None, say=print,
             live: bool = True, stop: threading.Event | None = None, signing: bool = True,
             spec_path: Path = DEMO_SPEC, policy_kind: str | None = None, power_profile: str = "cpu") -> dict:
    """Run the demo; ``rate`` None: 100 req/s under the rules, a calibrated load under rli (module docstring);
    ``power_profile``: where the nodes' power per variant comes from (`edge.thermal.POWER_PROFILES`)."""
    from deploy.broker import EmbeddedBroker
    from deploy.topics import ensure_topics
    from deploy.workflow_spec import load_workflow_spec
    from edge.worker import EdgeWorker
    from morph.zoo import build_zoo, load_manifest

    workflow = load_workflow_spec(spec_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A zoo the caller names is used as it is (whatever its profile); the default one is built if missing.
    manifest = load_manifest(zoo_dir) if zoo_dir else build_zoo(progress=say)
    keyring = signing_key = None
    if signing:  # commands are signed by the control flow and checked by the worker
        from deploy.keys_cmd import KEYRING, PRIVATE, generate_keys

        generate_keys(out_dir / "keys", force=True)
        keyring, signing_key = out_dir / "keys" / KEYRING, out_dir / "keys" / PRIVATE
    with EmbeddedBroker(log_path=out_dir / "broker.log") as broker:
        spec, policy = demo_flow_spec(workflow, broker.bootstrap, speed, manifest.root, signing_key, policy_kind)
        policy_kind = spec.options.get("policy_kind") or "rules"
        rate, capacity = (rate, None) if rate is not None else \
            calibrate_rate(manifest, say) if policy_kind == "rli" else (100.0, None)
        settings, topics = spec.kafka, spec.topic_names
        ensure_topics(settings, topics.all(), partitions=workflow.partitions())
        say(f"{spec_path}: AdaptiveWorkflow {workflow.name!r}, step down at {policy.hot_c:g} °C, snn at "
            f"{policy.critical_c:g} °C, back up at {policy.recover_c:g} °C; broker at {broker.bootstrap}")
        flow = start_flow_process(spec, out_dir / "flow.log")
        monitor = Monitor(settings, topics).start()
        worker = None
        try:
            time.sleep(2.0)  # the flow assigns its partitions (at their end) before telemetry flows
            if flow.poll() is not None:
                raise RuntimeError(f"the control flow exited at start: see {out_dir / 'flow.log'}")
            # The nodes' power per variant follows the zoo's measured cost (or the GPU-like profile),
            # and the event's physics is the one stated for that profile (edge.thermal.thermal_event).
            worker = EdgeWorker(settings, topics, ["edge-1", "edge-2"], thermal_event(SCENARIO_S, power_profile),
                                power_profile=power_profile,
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
    summary.update({"policy": policy_kind, "rate_rps": rate, "measured_capacity_rps": capacity,
                    "power_profile": power_profile})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(monitor, histories, summary, out_dir / "timeline.png", start_ms, speed)
    return summary


def _run(args) -> int:
    import signal

    if args.speed <= 0 or (args.rate is not None and args.rate <= 0):
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
                           signing=not args.unsigned, spec_path=args.spec, policy_kind=args.policy,
                           power_profile=args.power_profile)
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
    say(f"policy {summary['policy']}, {summary['rate_rps']:g} req/s offered per node, "
        f"power per variant from the {args.power_profile} profile:")
    say(f"  {'node':<8}{'max °C':>8}{'s>85':>6}{'s>90':>6}{'J/inf':>9}{'acc':>7}{'SLO s':>7}{'reward':>8}")
    for node_id, n in summary["nodes"].items():
        energy = "-" if n["energy_j_per_inference"] is None else f"{n['energy_j_per_inference']:.4f}"
        reward = "-" if n["mean_reward"] is None else f"{n['mean_reward']:.3f}"
        say(f"  {node_id:<8}{n['max_temp_c'] or 0:>8.1f}{n['seconds_above_85']:>6}{n['seconds_above_90']:>6}"
            f"{energy:>9}{n['accuracy_served']:>7.3f}{n['slo_violation_seconds']:>7}{reward:>8}")
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
    p.add_argument("--rate", type=float, default=None,
                   help="requests/s offered to each node (default: 100 with the rules; with --policy rli 80 %% of "
                        "the cnn's capacity, measured on this machine at the start)")
    p.add_argument("--policy", choices=("rules", "rli"),
                   help="who decides: the rules or the learned agent (rli); default: the resource's "
                        "adaptation.policy (rules in the shipped demo)")
    p.add_argument("--power-profile", choices=POWER_PROFILES, default="cpu",
                   help="where the nodes' power per variant comes from: the zoo's measured CPU time per inference "
                        "(cpu, the default) or FLOPs, each with the thermal event stated for a measured-cost node "
                        "(edge.thermal.MEASURED_COST_EVENT); gpu: the GPU-like profile and its own event")
    p.add_argument("--zoo", help="model zoo directory, used as it is (default: the built-in cache, built if missing)")
    p.add_argument("--spec", type=Path, default=DEMO_SPEC, metavar="FILE",
                   help="the AdaptiveWorkflow resource to run: its constraints and adaptation settings drive the "
                        "policy (default: the shipped deploy/examples/demo.yaml)")
    p.add_argument("--unsigned", action="store_true",
                   help="commands unsigned (default: the control flow signs them with a key made in OUT/keys, "
                        "and the worker rejects any command that does not verify)")
