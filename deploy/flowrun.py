"""``liquid flow run NAME``: run a dataflow on Bytewax workers.

* ``-w N``: N worker threads in this process;
* ``-p N``: N processes on this machine (spawned here, each ``-w`` workers);
* ``-i ID -a HOST:PORT;HOST:PORT...``: this process is member ID of a cluster
  spanning several hosts (run the same command on each host with its own ID).

With ``--recovery-dir`` Bytewax snapshots state and source offsets to SQLite
every ``--snapshot-interval`` seconds; run the same command again to resume
where the last snapshot left off.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from deploy.errors import UsageError
from deploy.kafka import add_kafka_args, require_topics, settings_from_args
from flows.spec import ENV_VAR, FlowSpec

#: Flow name -> module with ``build(spec)`` and ``from_env()``.
FLOWS = {"control": "flows.control", "workflow": "flows.workflow", "sync": "flows.sync"}
#: Topics each flow reads (checked before starting, for a clear error).
FLOW_INPUTS = {"control": ("telemetry", "acks"), "workflow": ("signals",), "sync": ("executions",)}
POLICY_KINDS = ("rules", "rli")


def flow_module(name: str):
    if name not in FLOWS:
        raise UsageError(f"unknown flow {name!r}; known: {', '.join(FLOWS)}")
    try:
        return importlib.import_module(FLOWS[name])
    except ModuleNotFoundError as err:
        raise UsageError(f"flow {name!r} is not available in this build ({err.name} missing)") from None


#: A staging directory of recovery partitions older than this was left by a start that was killed.
STALE_STAGING_S = 3600.0


def prepare_recovery(recovery_dir: Path, partitions: int) -> None:
    """Create the SQLite recovery partitions on first use; reuse them after.

    The partitions are made in a staging directory beside ``recovery_dir`` and renamed into
    place: a process stopped while creating them (``liquid deploy apply`` restarts a flow as soon
    as its settings change) leaves no half-made partition that the next start would take as its
    store. A start that is killed outright leaves its staging directory; a later start removes it
    once it is `STALE_STAGING_S` old (not sooner: it may be another process's, still at work).
    """
    from bytewax.recovery import init_db_dir

    if any(recovery_dir.glob("part-*.sqlite3")):
        return
    recovery_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{recovery_dir.name}.init-"
    for stale in recovery_dir.parent.glob(prefix + "*"):
        try:
            if time.time() - stale.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(stale, ignore_errors=True)
        except FileNotFoundError:  # another start removed it first
            pass
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=recovery_dir.parent))
    try:
        init_db_dir(staging, partitions)
        try:
            staging.rename(recovery_dir)  # atomic, onto nothing or an empty directory
            return
        except OSError:  # the directory holds other files, or another process's new store
            pass
        if not any(recovery_dir.glob("part-*.sqlite3")):
            for part in sorted(staging.iterdir()):
                part.replace(recovery_dir / part.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_flow(spec: FlowSpec, workers: int = 1, processes: int = 1, process_id: int | None = None,
             addresses: list[str] | None = None, recovery_dir: Path | None = None,
             snapshot_interval_s: float = 10.0, backup_interval_s: float = 0.0, metrics_port: int | None = None) -> int:
    """Run ``spec`` to completion (or until interrupted); returns an exit status.

    With ``metrics_port`` the process serves Prometheus metrics over HTTP (``/metrics``):
    Bytewax's per-partition consumer lag, dead letters by topic and reason, and
    whatever else the flow's steps register; a local cluster's process K uses
    ``metrics_port + K``.
    """
    if recovery_dir is not None:
        prepare_recovery(recovery_dir, max(1, workers * max(processes, len(addresses or []))))
    if processes > 1 and process_id is None:
        return _spawn_local_cluster(spec, workers, processes, recovery_dir, snapshot_interval_s, backup_interval_s,
                                    metrics_port)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    # Bytewax takes a snapshot of every key touched in an epoch whether or not a recovery store
    # keeps it; without one the flows' stateful steps hand over nothing instead of a copy.
    flow = flow_module(spec.name).build(replace(spec, recovery=recovery_dir is not None))
    recovery = RecoveryConfig(str(recovery_dir), timedelta(seconds=backup_interval_s)) if recovery_dir else None
    cli_main(flow, workers_per_process=workers, process_id=process_id, addresses=addresses,
             epoch_interval=timedelta(seconds=snapshot_interval_s), recovery_config=recovery)
    return 0


def _spawn_local_cluster(spec: FlowSpec, workers: int, processes: int, recovery_dir: Path | None,
                         snapshot_interval_s: float, backup_interval_s: float, metrics_port: int | None) -> int:
    from deploy.broker import free_port

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    env = {**os.environ, ENV_VAR: spec.to_json()}
    children = []
    for pid in range(processes):
        # Not `python -m bytewax.run`: its -s/-b take whole seconds and would truncate 0.2 s to 0.
        member = {"workers": workers, "process_id": pid, "addresses": addresses.split(";"),
                  "recovery_dir": str(recovery_dir) if recovery_dir else None,
                  "snapshot_interval_s": snapshot_interval_s, "backup_interval_s": backup_interval_s,
                  "metrics_port": None if metrics_port is None else metrics_port + pid}
        children.append(subprocess.Popen([sys.executable, "-m", "deploy.flowrun", json.dumps(member)], env=env))

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return next((c for c in codes if c != 0), 0)


def spec_from_args(name: str, args) -> FlowSpec:
    settings = settings_from_args(args)
    policy, kind = {}, "rules"
    for key, value in args.policy or []:
        if not key:
            kind = value
            continue
        try:
            policy[key] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise UsageError(f"--policy {key}={value}: expected a number") from None
    return FlowSpec(name=name, bootstrap=settings.bootstrap, kafka_config=settings.config,
                    tail=not getattr(args, "until_end", False), start=getattr(args, "start", "beginning"), batch_size=args.batch_size,
                    registry_url=args.registry_url, zoo_dir=str(args.zoo) if args.zoo else None,
                    models=args.models, policy=policy,
                    options={k: v for k, v in (("store", getattr(args, "store", None)),
                                               ("policy_kind", kind if kind != "rules" else None),
                                               ("no_peers", kind == "rli" and getattr(args, "no_peers", False)),
                                               ("no_dp", kind == "rli" and getattr(args, "no_dp", False)),
                                               ("dp_epsilon", kind == "rli" and getattr(args, "dp_epsilon", 1.0)),
                                               ("rli_epoch_s", kind == "rli" and getattr(args, "rli_epoch", None)),
                                               ("speculation", getattr(args, "speculation", False)),
                                               ("signing_key", str(args.signing_key) if getattr(args, "signing_key", None)
                                                else None),
                                               ("resilience", getattr(args, "resilience", False)),
                                               ("idle_timeout_ms", int(args.idle_timeout * 1000)
                                                if getattr(args, "idle_timeout", None) else None),
                                               ("metrics_interval_ms", int(args.metrics_interval * 1000)
                                                if getattr(args, "metrics_interval", None) else None),
                                               ("log_metrics", getattr(args, "log_metrics", False)),
                                               ("conflicts", dict(getattr(args, "conflict", None) or []))) if v})


def _run(args) -> int:
    if args.from_spec:
        from deploy.workflow_spec import load_workflow_spec

        spec = load_workflow_spec(args.from_spec).flow_spec(args.flow)
    else:
        spec = spec_from_args(args.flow, args)
    flow_module(spec.name)
    if getattr(args, "rli_epoch", None) is not None and args.rli_epoch <= 0:
        raise UsageError("--rli-epoch must be positive (seconds of event time between the agent's decisions)")
    if spec.name == "sync" and not spec.options.get("store"):
        raise UsageError("the sync flow needs --store PATH|DSN: the central store of execution records")
    inputs = FLOW_INPUTS[spec.name] + (("experience",) if spec.options.get("policy_kind") == "rli"
                                       and not spec.options.get("no_peers") else ())
    require_topics(spec.kafka, [getattr(spec.topic_names, t) for t in inputs])
    if (args.process_id is None) != (args.addresses is None):
        raise UsageError("-i/--process-id and -a/--addresses go together")
    if args.process_id is not None and args.processes > 1:
        raise UsageError("use either -p (processes on this machine) or -i/-a (one process of a cluster), not both")
    addresses = args.addresses.split(";") if args.addresses else None
    if addresses is not None and not 0 <= args.process_id < len(addresses):
        raise UsageError(f"-i {args.process_id} is not an index into the {len(addresses)} addresses given with -a")
    print(f"flow {spec.name}: {args.workers} worker(s) x {args.processes if addresses is None else len(addresses)} "
          f"process(es), Kafka {spec.kafka.bootstrap}" + (f", recovery {args.recovery_dir}" if args.recovery_dir else ""),
          file=sys.stderr, flush=True)
    return run_flow(spec, workers=args.workers, processes=args.processes, process_id=args.process_id,
                    addresses=addresses, recovery_dir=args.recovery_dir,
                    snapshot_interval_s=args.snapshot_interval, backup_interval_s=args.backup_interval,
                    metrics_port=args.metrics_port)


def add_flow_args(p) -> None:
    """Options shared by ``flow run`` and ``replay --flow``."""
    from deploy.kafka import parse_setting

    p.add_argument("--batch-size", type=int, default=1000, help="max messages per source poll (default %(default)s)")
    p.add_argument("--registry-url", help="schema registry URL: write Confluent framing (default: single-object)")
    p.add_argument("--zoo", type=Path, help="model zoo directory: commands carry each model's sha256 from its manifest")
    p.add_argument("--models", action="store_true", help="control flow: online anomaly and forecast models on")
    p.add_argument("--store", metavar="PATH|DSN",
                   help="workflow flow: persist every signal to this history store (SQLite file, or postgresql://...); "
                        "sync flow: the central store the nodes' execution records go to (required)")
    p.add_argument("--conflict", metavar="ENTITY=STRATEGY", action="append", type=parse_conflict,
                   help="sync flow: conflict strategy of an entity type (execution, step, or default for the others): "
                        "last_modified (the default), central_wins, edge_wins or manual (held for `liquid sync "
                        "conflicts`); repeatable")
    p.add_argument("--speculation", action="store_true",
                   help="workflow flow: send shadow pre-execution commands for predicted steps (and learn from their acks)")
    p.add_argument("--resilience", action="store_true",
                   help="workflow flow: learn the causal failure graph and the recovery policy from failed signals, "
                        "publish the policy to workflow.policy")
    p.add_argument("--metrics-interval", type=float, metavar="SECONDS",
                   help="workflow flow: publish each workflow's running next-step accuracy and calibration to "
                        "workflow.metrics this often, in event time (default 60)")
    p.add_argument("--log-metrics", action="store_true",
                   help="workflow flow: also print each published metrics record as a log line")
    p.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="workflow flow: close runs with no signal for this long (event time; default: never)")
    p.add_argument("--signing-key", type=Path, metavar="PEM",
                   help="sign every MorphCommand and ShadowCommand with this Ed25519 private key "
                        "(`liquid keys generate`); workers started with --keyring reject unsigned commands")

    def policy_arg(text: str):
        return ("", text) if text in POLICY_KINDS else parse_setting(text)

    p.add_argument("--policy", metavar="rules|rli|KEY=VALUE", action="append", type=policy_arg,
                   help="control flow: which policy decides (rules, the default, or rli: the learned agent), or "
                        "override a rules setting, e.g. --policy hot_c=80 (repeatable)")
    p.add_argument("--no-peers", action="store_true", help="--policy rli: do not share or absorb peers' experience")
    p.add_argument("--no-dp", action="store_true",
                   help="--policy rli: share experience without differential privacy (for comparison)")
    p.add_argument("--dp-epsilon", type=float, default=1.0,
                   help="--policy rli: ε of the Laplace mechanism per experience release (default %(default)s)")
    p.add_argument("--rli-epoch", type=float, metavar="SECONDS",
                   help="--policy rli: event time between the agent's decisions (default 10; the critical "
                        "temperature rule acts on every sample in between)")


def parse_conflict(text: str) -> tuple[str, str]:
    """``ENTITY=STRATEGY`` of ``--conflict``, checked."""
    from fingerprint.store import STRATEGIES

    entity, _, strategy = text.partition("=")
    if not entity or strategy not in STRATEGIES:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ENTITY=STRATEGY with a strategy among "
                                         f"{', '.join(STRATEGIES)}")
    return entity, strategy


def register(tree) -> None:
    p = tree.command("flow run", "run a dataflow (control | workflow | sync) on Bytewax workers", _run, description=__doc__)
    p.add_argument("flow", help=f"which flow: {', '.join(FLOWS)}")
    p.add_argument("-w", "--workers", type=int, default=1, help="worker threads per process (default %(default)s)")
    p.add_argument("-p", "--processes", type=int, default=1, help="processes on this machine (default %(default)s)")
    p.add_argument("-i", "--process-id", type=int, help="this process's index in a multi-host cluster")
    p.add_argument("-a", "--addresses", help="HOST:PORT of every process of the cluster, separated by ';'")
    p.add_argument("--recovery-dir", type=Path, help="snapshot state here (SQLite) and resume from it on restart")
    p.add_argument("--snapshot-interval", type=float, default=10.0, help="seconds between snapshots (default %(default)s)")
    p.add_argument("--backup-interval", type=float, default=0.0,
                   help="seconds to keep old snapshots before deleting them (default %(default)s)")
    p.add_argument("--start", choices=("beginning", "end"), default="beginning",
                   help="where to start reading partitions with no recovery snapshot (default %(default)s)")
    p.add_argument("--until-end", action="store_true", help="stop at the end of every input partition instead of tailing")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on this port (process K of -p N uses PORT+K)")
    p.add_argument("--from-spec", type=Path, metavar="SPEC.yaml",
                   help="take the flow's Kafka, topics, policy and constraints from an AdaptiveWorkflow resource "
                        "(its Kafka and flow options on this command line are then ignored)")
    add_flow_args(p)
    add_kafka_args(p)


if __name__ == "__main__":
    # A flow process spawned with its spec in the environment and its place in the cluster as JSON
    # in argv[1]: a member of a local cluster (`_spawn_local_cluster`), or the demo's control flow.
    member = json.loads(sys.argv[1])
    recovery = member.pop("recovery_dir")
    sys.exit(run_flow(FlowSpec.from_env(), recovery_dir=Path(recovery) if recovery else None, **member))
