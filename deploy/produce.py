"""``liquid produce telemetry``: a simulated fleet streaming Telemetry into Kafka.

Each node is a `edge.fleet.SimulatedNode` (RC thermal model, injected
scenario). Event time advances by ``--interval`` per sample; ``--speed`` sets
how fast that runs against the wall clock (0 = as fast as possible, for load
tests). The fleet follows the control flow's commands and acknowledges them,
closing the loop, unless ``--open-loop`` is given.
"""

from __future__ import annotations

import random
import sys
import time

from deploy.errors import UsageError
from deploy.kafka import add_kafka_args, require_topics, settings_from_args
from edge.thermal import SCENARIOS, Scenario
from schemas.kafka import produce_waiting
from schemas.registry import codec_for


def produce_telemetry(settings, topics, nodes: list[str], scenario: Scenario, interval_s: float = 1.0,
                      speed: float = 1.0, duration_s: float | None = None, follow_commands: bool = True,
                      start_ms: int | None = None, seed: int = 0, progress=None, stop=None,
                      varied: bool = False, codec=None, staggered: bool = False) -> dict:
    """Run the fleet; returns counts. ``stop`` is an optional threading.Event.

    By default every node samples at the same instant of each interval (a burst of
    ``len(nodes)`` samples per tick). With ``staggered`` each node samples at its own
    phase within the interval, drawn from its id and ``seed``, as independent nodes'
    clocks do: the same rate, spread over the interval instead of in one burst.

    With ``varied`` each node gets its own `edge.fleet.NodeProfile` (air, fan, power cap) drawn from
    its id and ``seed``; otherwise every node is the nominal one. ``codec`` writes the Confluent
    framing when it has a registry (`schemas.registry.codec_for`).
    """
    from confluent_kafka import Producer

    from edge.fleet import NodeProfile, SimulatedNode
    from edge.listener import CommandListener
    from schemas.codec import Codec

    codec = codec or Codec()
    fleet = {n: SimulatedNode(n, scenario, seed=seed, profile=NodeProfile.drawn(n, seed) if varied else NodeProfile())
             for n in nodes}
    listener = None
    if follow_commands:
        def apply(command):
            node = fleet[command["node_id"]]
            before = node.apply(command)
            return {"command_id": command["command_id"], "node_id": node.node_id, "kind": "MORPH",
                    "status": "APPLIED", "reason": "ok (simulated node)", "ts_ms": int(time.time() * 1000),
                    "from_variant": before[0], "to_variant": node.variant, "from_precision": before[1],
                    "to_precision": node.precision, "swap_ms": 0.0,
                    "decided_on_ts_ms": command["decided_on_ts_ms"], "details": {}}

        listener = CommandListener(settings, topics.commands, topics.acks, set(nodes), apply, codec)
        listener.start()
        listener.wait_ready()
    producer = Producer(settings.gateway_producer())  # one producer for the whole fleet
    duration = duration_s if duration_s is not None else scenario.duration_s
    steps = int(duration / interval_s)
    t0_ms = int(time.time() * 1000) if start_ms is None else start_ms
    phase = {n: (random.Random(f"phase-{seed}-{n}").random() if staggered else 0.0) * interval_s for n in nodes}
    in_phase_order = sorted(fleet.values(), key=lambda node: phase[node.node_id])
    wall0 = time.monotonic()
    sent = 0
    last_report = wall0
    try:
        for k in range(steps):
            if stop is not None and stop.is_set():
                break
            for node in in_phase_order:
                offset_s = k * interval_s + phase[node.node_id]
                if staggered and speed > 0:
                    wait = wall0 + offset_s / speed - time.monotonic()
                    if wait > 0.001:
                        producer.poll(0)
                        time.sleep(wait)
                record = node.sample(t0_ms + int(offset_s * 1000), interval_s)
                produce_waiting(producer, topics.telemetry, node.node_id.encode(), codec.encode("Telemetry", record))
                sent += 1
            producer.poll(0)
            if speed > 0:
                delay = wall0 + (k + 1) * interval_s / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            now = time.monotonic()
            if progress is not None and now - last_report >= 2.0:
                last_report = now
                temps = ", ".join(f"{n.node_id} {n.thermal.temp_c:.1f}°C {n.variant}" for n in fleet.values())
                progress(f"[{k + 1}/{steps}] {sent} samples ({sent / (now - wall0):.0f}/s) | {temps}")
    finally:
        producer.flush(30)
        if listener is not None:
            time.sleep(0.2)  # let commands for the last samples arrive
            listener.stop()
    return {"samples": sent, "seconds": time.monotonic() - wall0,
            "commands_applied": listener.received if listener else 0,
            "final": {n.node_id: n.variant for n in fleet.values()}}


def _telemetry(args) -> int:
    if args.nodes < 1 or args.interval <= 0 or args.speed < 0:
        raise UsageError("need --nodes >= 1, --interval > 0 and --speed >= 0")
    settings = settings_from_args(args)
    from schemas import TopicNames

    topics = TopicNames(telemetry=args.topic)
    require_topics(settings, [topics.telemetry] + ([] if args.open_loop else [topics.commands, topics.acks]))
    nodes = [f"{args.prefix}{i + 1}" for i in range(args.nodes)]
    scenario = Scenario(args.scenario, duration_s=args.duration)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if not args.quiet else None
    result = produce_telemetry(settings, topics, nodes, scenario, args.interval, args.speed, args.duration,
                               follow_commands=not args.open_loop, seed=args.seed, progress=say,
                               varied=not args.identical, codec=codec_for(args.registry_url, topics))
    print(f"produced {result['samples']} telemetry samples for {len(nodes)} node(s) in {result['seconds']:.1f}s; "
          f"commands applied: {result['commands_applied']}; final variants: {result['final']}")
    return 0


def register(tree) -> None:
    p = tree.command("produce telemetry", "stream telemetry from a simulated fleet (RC thermal model, scenarios)",
                     _telemetry, description=__doc__)
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default %(default)s)")
    p.add_argument("--prefix", default="edge-", help="node id prefix (default %(default)s)")
    p.add_argument("--scenario", choices=SCENARIOS, default="heat-wave", help="injected scenario (default %(default)s)")
    p.add_argument("--duration", type=float, default=120.0, help="event-time seconds to simulate (default %(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="event-time seconds between samples (default %(default)s)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="event time per wall-clock time: 1 = real time, 10 = ten times faster, 0 = as fast as possible")
    p.add_argument("--open-loop", action="store_true", help="ignore commands (the fleet keeps serving what it started with)")
    p.add_argument("--seed", type=int, default=0, help="noise and node-profile seed (default %(default)s)")
    p.add_argument("--identical", action="store_true",
                   help="every node the nominal one (by default each node has its own air, fan and power cap)")
    p.add_argument("--topic", default="edge.telemetry", help="telemetry topic (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_registry_arg(p)
    add_kafka_args(p)
    _register_signals(tree)


def add_registry_arg(p) -> None:
    p.add_argument("--registry-url", metavar="URL",
                   help="schema registry: write the Confluent framing with its schema ids (default: single-object "
                        "encoding, no registry)")


def produce_signals(settings, topic: str, signals, speed: float = 0.0, progress=None, codec=None) -> dict:
    """Produce WorkflowSignal records keyed by workflow, paced by their timestamps / ``speed`` (0: no pacing)."""
    from confluent_kafka import Producer

    from schemas.codec import Codec

    codec, producer = codec or Codec(), Producer(settings.gateway_producer())  # for every workflow of the log
    sent, first_ts, wall0, last_report = 0, None, time.monotonic(), time.monotonic()
    for signal in signals:
        if speed > 0:
            first_ts = signal["ts_ms"] if first_ts is None else first_ts
            delay = wall0 + (signal["ts_ms"] - first_ts) / 1000.0 / speed - time.monotonic()
            if delay > 0:
                producer.poll(0)
                time.sleep(delay)
        produce_waiting(producer, topic, signal["workflow_id"].encode(), codec.encode("WorkflowSignal", signal))
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
            now = time.monotonic()
            if progress is not None and now - last_report >= 2.0:
                last_report = now
                progress(f"{sent} signals ({sent / (now - wall0):,.0f}/s)")
    producer.flush(60)
    return {"signals": sent, "seconds": time.monotonic() - wall0}


def _signals(args) -> int:
    from deploy.evaluate_nextstep import log_signals
    from schemas import TopicNames

    if bool(args.log) == bool(args.from_wfcommons):
        raise UsageError("give one source: --log/--from-log FILE.csv (with --case-col, --activity-col, --time-col, "
                         "and --attr-col NAME for each attribute to carry) or --from-wfcommons FILE.json")
    if args.speed < 0:
        raise UsageError("--speed must be >= 0")
    settings = settings_from_args(args)
    topic = args.topic or TopicNames().signals
    require_topics(settings, [topic])
    if args.log:
        signals = log_signals(args, workflow_id=args.workflow)
    else:
        from pathlib import Path

        from fingerprint.traces import TraceError, read_wfcommons

        path = Path(args.from_wfcommons)
        if not path.is_file():
            raise UsageError(f"no such WfCommons instance: {path}")
        try:
            signals = list(read_wfcommons(path, workflow_id=args.workflow, runs=args.runs,
                                          speed=args.time_scale, jitter=args.jitter, seed=args.seed))
        except (TraceError, ValueError, KeyError) as err:
            raise UsageError(f"{path}: not a WfCommons instance ({err})") from None
        signals.sort(key=lambda s: s["ts_ms"])
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if not args.quiet else None
    result = produce_signals(settings, topic, signals, speed=args.speed, progress=say,
                             codec=codec_for(args.registry_url))
    print(f"produced {result['signals']} workflow signals to {topic} in {result['seconds']:.1f}s")
    return 0


def _register_signals(tree) -> None:
    from deploy.evaluate_nextstep import add_log_arguments

    p = tree.command("produce signals", "replay real executions as workflow signals (CSV event log or WfCommons)",
                     _signals,
                     description="Replay an event log (CSV with case, activity and timestamp columns) or a WfCommons "
                                 "instance as WorkflowSignal records, in timestamp order, keyed by workflow id. "
                                 "With --attr-col, the log's case and event attribute columns go into the signals' "
                                 "attributes, which the workflow flow's predictor conditions on.")
    add_log_arguments(p, required=False)
    p.add_argument("--from-wfcommons", metavar="FILE.json", help="a WfCommons workflow instance (schema 1.4+ or 1.3)")
    p.add_argument("--runs", type=int, default=1, help="WfCommons: how many runs of the instance (default %(default)s)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="WfCommons: divide recorded runtimes by this (default %(default)s)")
    p.add_argument("--jitter", type=float, default=0.0, help="WfCommons: lognormal sigma on runtimes (default 0)")
    p.add_argument("--seed", type=int, default=0, help="WfCommons: jitter seed")
    p.add_argument("--workflow", help="workflow id (default: from the file name)")
    p.add_argument("--speed", type=float, default=0.0,
                   help="pace by the signals' timestamps: 1 = original speed, 60 = a minute per second, "
                        "0 = as fast as possible (default)")
    p.add_argument("--topic", help="signals topic (default workflow.signals)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_registry_arg(p)
    add_kafka_args(p)
