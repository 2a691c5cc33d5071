"""``liquid produce telemetry``: a simulated fleet streaming Telemetry into Kafka.

Each node is a `morph.fleet.SimulatedNode` (RC thermal model, injected
scenario). Event time advances by ``--interval`` per sample; ``--speed`` sets
how fast that runs against the wall clock (0 = as fast as possible, for load
tests). The fleet follows the control flow's commands and acknowledges them,
closing the loop, unless ``--open-loop`` is given.
"""

from __future__ import annotations

import sys
import time

from deploy.kafka import add_kafka_args, require_topics, settings_from_args
from morph.thermal import SCENARIOS, Scenario


def produce_telemetry(settings, topics, nodes: list[str], scenario: Scenario, interval_s: float = 1.0,
                      speed: float = 1.0, duration_s: float | None = None, follow_commands: bool = True,
                      start_ms: int | None = None, seed: int = 0, progress=None, stop=None) -> dict:
    """Run the fleet; returns counts. ``stop`` is an optional threading.Event."""
    from confluent_kafka import Producer

    from deploy.edge import CommandListener
    from morph.fleet import SimulatedNode
    from schemas.codec import Codec

    codec = Codec()
    fleet = {n: SimulatedNode(n, scenario, seed=seed) for n in nodes}
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
    producer = Producer(settings.producer())
    duration = duration_s if duration_s is not None else scenario.duration_s
    steps = int(duration / interval_s)
    t0_ms = int(time.time() * 1000) if start_ms is None else start_ms
    wall0 = time.monotonic()
    sent = 0
    last_report = wall0
    try:
        for k in range(steps):
            if stop is not None and stop.is_set():
                break
            ts = t0_ms + int(k * interval_s * 1000)
            for node in fleet.values():
                record = node.sample(ts, interval_s)
                while True:
                    try:
                        producer.produce(topics.telemetry, key=node.node_id.encode(),
                                         value=codec.encode("Telemetry", record))
                        break
                    except BufferError:  # local queue full: let it drain, lose nothing
                        producer.poll(0.05)
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
    from deploy.cli import UsageError

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
                               follow_commands=not args.open_loop, seed=args.seed, progress=say)
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
    p.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)s)")
    p.add_argument("--topic", default="edge.telemetry", help="telemetry topic (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_kafka_args(p)
