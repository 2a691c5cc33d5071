"""``liquid worker``: start edge inference nodes from the command line (the worker itself is `edge.worker`)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from deploy.errors import UsageError
from deploy.kafka import add_kafka_args, require_topics, settings_from_args
from deploy.produce import add_registry_arg
from edge.listener import EDGE_FETCH_WAIT_MS, LONG_POLL_FETCH_WAIT_MS
from edge.thermal import POWER_PROFILES, SCENARIOS, Scenario
from edge.worker import EdgeWorker
from morph.zoo.lighting import ShiftChange
from schemas.registry import codec_for


def _run(args) -> int:
    import signal

    from morph.zoo import ZooMissingError
    from schemas import TopicNames

    if not args.node:
        raise UsageError("name at least one node: --node ID (repeatable)")
    settings = settings_from_args(args)
    topics = TopicNames()
    require_topics(settings, [topics.commands, topics.acks, topics.telemetry]
                   + ([topics.signals, topics.shadow, topics.executions] if args.workflow else [])
                   + ([topics.checkpoints] if args.workflow and args.takeover_after else []))
    try:
        worker = EdgeWorker(settings, topics, args.node, Scenario(args.scenario, duration_s=args.duration),
                            zoo_dir=args.zoo, sensor=args.sensor, rate=args.rate, interval_s=args.interval,
                            codec=codec_for(args.registry_url, topics), power_profile=args.power_profile,
                            log=lambda m: print(m, flush=True),
                            workflow=args.workflow, workflow_runs=args.workflow_runs,
                            outbox_path=args.outbox or Path(".cache/edge") / f"outbox-{'-'.join(args.node)}.db",
                            keyring=args.keyring, silent_after_s=args.silent_after or None,
                            lighting=ShiftChange() if args.lighting == "shift-change" else None,
                            workflow_gap_s=args.workflow_gap, takeover_after_s=args.takeover_after or None,
                            workflow_cost_scale=args.workflow_cost_scale, fetch_wait_ms=args.fetch_wait_ms)
    except ZooMissingError as err:
        raise UsageError(str(err)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.start()
    if args.metrics_port is not None:
        from prometheus_client import REGISTRY, start_http_server

        from edge.metrics import WorkerCollector

        REGISTRY.register(WorkerCollector(worker))
        start_http_server(args.metrics_port)
    sources = {n.node_id: n.sensor.source for n in worker.nodes.values()}
    print(f"worker serving {', '.join(args.node)} at {args.rate:g} req/s each; sensors {sources}; Ctrl-C stops",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.run_for if args.run_for else None
    # One wait until a signal or the deadline, not a wake-up a second: on an edge node every
    # wake-up of a Python thread is CPU taken from serving (the signal handler sets ``stop``,
    # which ends the wait at once).
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        stop.wait(None if deadline is None else deadline - time.monotonic())
    stats = worker.stop()
    for node_id, s in stats.items():
        node = worker.nodes[node_id]
        runs = f"; {len(node.runs)} workflow runs, shadow {node.executor.stats}" if node.executor else ""
        print(f"{node_id}: served {s.served}, dropped {s.dropped}, accuracy {s.accuracy:.3f}{runs}")
    return 0


def register(tree) -> None:
    p = tree.command("worker", "run edge inference nodes that apply morph commands while serving", _run,
                     description=__doc__)
    p.add_argument("--node", action="append", help="node id served by this worker (repeatable)")
    p.add_argument("--zoo", help="model zoo directory (default: the built-in cache, see `liquid zoo build`)")
    p.add_argument("--sensor", choices=("auto", "nvml", "thermal"), default="auto",
                   help="resource readings: NVML on an NVIDIA GPU, the thermal model, or auto (default)")
    p.add_argument("--scenario", choices=SCENARIOS, default="steady",
                   help="thermal-model scenario to inject (default %(default)s)")
    p.add_argument("--duration", type=float, default=150.0, help="scenario length in seconds (default %(default)s)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s each node serves (default %(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between telemetry samples (default %(default)s)")
    p.add_argument("--power-profile", choices=POWER_PROFILES, default="cpu",
                   help="thermal model power per variant: the zoo's measured CPU time per inference (default), "
                        "its FLOPs, or gpu (a GPU-like profile: transformer 1.0, lstm 0.6, cnn 0.4, mobilenet 0.25, "
                        "snn 0.12 of the dynamic power)")
    p.add_argument("--lighting", choices=("steady", "shift-change"), default="steady",
                   help="the requests' lighting: the day shift throughout (default), or a shift change (20 s of day "
                        "light, a 30 s ramp to the night shift, 60 s of night, back); telemetry's accuracy shows the "
                        "drop, and a command's preprocessing=illumination-normalisation recovers it")
    p.add_argument("--workflow", choices=("inspection",),
                   help="also execute workflow runs (the inspection pipeline) back to back on every node, emitting "
                        "their signals and applying shadow pre-execution commands")
    p.add_argument("--workflow-runs", type=int, help="stop after this many runs per node (default: until stopped)")
    p.add_argument("--workflow-gap", type=float, default=0.0, metavar="S",
                   help="seconds between two runs on a node (default %(default)s)")
    p.add_argument("--workflow-cost-scale", type=float, default=1.0, metavar="X",
                   help="multiply the inspection's I/O costs (camera, services, results store) by X, e.g. to stand "
                        "for slower services (default %(default)s)")
    p.add_argument("--takeover-after", type=float, metavar="S",
                   help="with --workflow: publish each run's committed steps (workflow.checkpoints) and resume the "
                        "unfinished runs of any node silent (no telemetry, no checkpoint) for S seconds, from their "
                        "last committed step (default: off)")
    p.add_argument("--run-for", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics (requests, latency, swaps, variant, temperature, power) on this port")
    p.add_argument("--outbox", type=Path, help="the durable outbox (SQLite) every record goes through; what is "
                                               "undelivered at exit is sent on the next start "
                                               "(default .cache/edge/outbox-<nodes>.db)")
    p.add_argument("--keyring", type=Path, help="trusted command keys (`liquid keys generate`): commands must be "
                                                "signed by one of them, others are rejected with an ack")
    p.add_argument("--fetch-wait-ms", type=int, default=EDGE_FETCH_WAIT_MS, metavar="MS",
                   help="how long the worker's command (and policy, sync) consumers ask the broker to hold an empty "
                        f"fetch (default %(default)s, for the embedded broker, which answers a fetch only when the "
                        f"wait ends); on a Kafka cluster, which answers as soon as a record arrives, use "
                        f"{LONG_POLL_FETCH_WAIT_MS}: commands are not slower and an idle node fetches 2 times a second "
                        f"instead of 10 (edge.listener)")
    p.add_argument("--silent-after", type=float, default=10.0,
                   help="seconds without contact with the cluster after which each node runs the morph policy "
                        "itself (default %(default)s; 0 turns local decisions off)")
    add_registry_arg(p)
    add_kafka_args(p)
