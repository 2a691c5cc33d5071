"""``liquid deploy``: run an AdaptiveWorkflow resource on this machine, or render it for Kubernetes and Prometheus.

``apply`` creates the topics, registers the schemas (with a registry in the
resource), and starts the resource's flows as background processes with recovery;
applying the same resource again changes nothing, applying a changed one restarts
only the flows whose settings changed (they resume from their snapshots).
``status`` shows what runs, each flow's consumer lag per partition (scraped from
its metrics port) and each node's configuration from its latest telemetry;
``delete`` stops the flows. A deployment's state (process ids, the applied
resource's digest, logs, recovery snapshots) lives under ``--state-dir``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from deploy.alert_rules import render_alert_rules
from deploy.errors import UsageError
from deploy.kubernetes import manifests_yaml, render_kubernetes
from deploy.workflow_spec import AdaptiveWorkflow, load_workflow_spec
from flows.spec import ENV_VAR

DEFAULT_STATE_DIR = Path(".liquid/deployments")


def _state_path(state_dir: Path, name: str) -> Path:
    return state_dir / name / "deployment.json"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not running: reap it if it is our child
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _start_flow(wf: AdaptiveWorkflow, flow: str, home: Path) -> dict:
    settings, spec = wf.flow_settings(flow), wf.flow_spec(flow)
    member = {"workers": settings["workers"], "processes": settings["replicas"], "process_id": None,
              "addresses": None, "recovery_dir": str(home / f"recovery-{flow}"),
              "snapshot_interval_s": settings["snapshot_interval_s"], "backup_interval_s": 0.0,
              "metrics_port": settings["metrics_port"] + 10 * wf.enabled_flows().index(flow)}
    log = open(home / f"{flow}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "deploy.flowrun", json.dumps(member)], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, ENV_VAR: spec.to_json()},
                            start_new_session=True)
    return {"pid": proc.pid, "spec": spec.to_json(), "metrics_port": member["metrics_port"],
            "replicas": settings["replicas"], "started_at": time.time(), "log": str(home / f"{flow}.log")}


def _stop(pid: int, timeout_s: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def apply(wf: AdaptiveWorkflow, state_dir: Path, say=print) -> dict:
    """Bring the machine to the resource: returns ``{flow: "started" | "restarted" | "unchanged" | "stopped"}``."""
    from deploy.topics import ensure_topics

    home = state_dir / wf.name
    home.mkdir(parents=True, exist_ok=True)
    path = _state_path(state_dir, wf.name)
    state = json.loads(path.read_text()) if path.exists() else {"flows": {}}
    control = wf.flow_spec("control")
    ensure_topics(control.kafka, control.topic_names.all(), partitions=wf.partitions())
    if control.registry_url:
        from schemas.registry import register_all

        register_all(control.registry_url, control.topic_names)
    outcome = {}
    for flow in wf.enabled_flows():
        running = state["flows"].get(flow)
        wanted_spec = wf.flow_spec(flow).to_json()
        replicas = wf.flow_settings(flow)["replicas"]
        same = running and running["spec"] == wanted_spec and running.get("replicas") == replicas
        if same and _alive(running["pid"]):
            outcome[flow] = "unchanged"
            continue
        if running and _alive(running["pid"]):
            _stop(running["pid"])
            outcome[flow] = "restarted"
        else:
            outcome[flow] = "started"
        state["flows"][flow] = _start_flow(wf, flow, home)
    for flow in set(state["flows"]) - set(wf.enabled_flows()):
        _stop(state["flows"].pop(flow)["pid"])
        outcome[flow] = "stopped"
    state.update(name=wf.name, digest=wf.digest, resource=wf.resource)
    path.write_text(json.dumps(state, indent=2))
    for flow, what in sorted(outcome.items()):
        say(f"{wf.name}/{flow}: {what}")
    return outcome


def delete(name: str, state_dir: Path, say=print) -> None:
    path = _state_path(state_dir, name)
    if not path.exists():
        raise UsageError(f"no deployment {name!r} under {state_dir} (see `liquid deploy status`)")
    state = json.loads(path.read_text())
    for flow, running in state["flows"].items():
        _stop(running["pid"])
        say(f"{name}/{flow}: stopped")
    path.unlink()


def scrape_lag(port: int, timeout_s: float = 2.0) -> dict[str, float] | None:
    """``{"topic[partition]": lag}`` from a flow's metrics endpoint, or None when it does not answer.

    It asks for the lag gauge alone (``name[]``): the whole exposition of a flow with thousands of
    workflows is ~0.6 MB, rendered in Python while the flow's worker waits for the GIL.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?name[]=bytewax_kafka_consumer_lag",
                                    timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    lag = {}
    for family in text_string_to_metric_families(text):
        if family.name == "bytewax_kafka_consumer_lag":
            for sample in family.samples:
                labels = sample.labels
                lag[f"{labels.get('topic', '?')}[{labels.get('partition', '?')}]"] = sample.value
    return lag


def status(state_dir: Path, say=print) -> list[dict]:
    rows = []
    for path in sorted(state_dir.glob("*/deployment.json")):
        state = json.loads(path.read_text())
        wf = AdaptiveWorkflow(state["resource"])
        say(f"{state['name']} (resource {state['digest']})")
        for flow, running in sorted(state["flows"].items()):
            alive = _alive(running["pid"])
            lag = scrape_lag(running["metrics_port"]) if alive else None
            lag_text = "no metrics yet" if lag is None else (", ".join(f"{k} {v:.0f}" for k, v in sorted(lag.items()))
                                                              or "no partitions assigned")
            say(f"  {flow}: {'running' if alive else 'NOT RUNNING'} pid {running['pid']}, "
                f"metrics :{running['metrics_port']}, lag {lag_text}; log {running['log']}")
            rows.append({"deployment": state["name"], "flow": flow, "running": alive, "lag": lag})
        for node, config in _node_configurations(wf).items():
            say(f"  node {node}: {config}")
    if not rows:
        say(f"no deployments under {state_dir}")
    return rows


def _node_configurations(wf: AdaptiveWorkflow) -> dict[str, str]:
    """Each node's configuration as its latest telemetry says: variant, precision, batch size, temperature."""
    from deploy.replay import read_topic

    spec = wf.flow_spec("control")
    try:
        records = read_topic(spec.kafka, spec.topic_names.telemetry)
    except Exception:  # noqa: BLE001 - status must show what it can when the broker is away
        return {}
    latest: dict[str, dict] = {}
    for r in records:
        if "node_id" in r and r.get("ts_ms", 0) >= latest.get(r["node_id"], {}).get("ts_ms", -1):
            latest[r["node_id"]] = r
    return {n: f"{r['variant']}/{r['precision']} batch {r['batch_size']}, {r['gpu_temp_c']:.1f} °C"
            for n, r in sorted(latest.items())}


def _apply(args) -> int:
    apply(load_workflow_spec(args.spec), args.state_dir)
    return 0


def _render(args) -> int:
    wf = load_workflow_spec(args.spec)
    if args.target == "prometheus":
        text = yaml.safe_dump(render_alert_rules(wf), sort_keys=False, allow_unicode=True)
    else:
        text = manifests_yaml(render_kubernetes(wf, image=args.image))
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def register(tree) -> None:
    state = dict(type=Path, default=DEFAULT_STATE_DIR, help="where deployments keep their state (default %(default)s)")
    p = tree.command("deploy validate", "check an AdaptiveWorkflow resource against its schema",
                     lambda a: print(f"{a.spec}: valid AdaptiveWorkflow {load_workflow_spec(a.spec).name!r}"))
    p.add_argument("spec", type=Path, help="the resource (YAML)")
    p = tree.command("deploy apply", "create topics, register schemas and run the resource's flows here (idempotent)",
                     _apply, description=__doc__)
    p.add_argument("spec", type=Path, help="the resource (YAML)")
    p.add_argument("--state-dir", **state)
    p = tree.command("deploy status", "what runs, consumer lag per partition, each node's configuration",
                     lambda a: status(a.state_dir) and 0)
    p.add_argument("--state-dir", **state)
    p = tree.command("deploy delete", "stop a deployment's flows", lambda a: delete(a.name, a.state_dir))
    p.add_argument("name", help="the resource's metadata.name")
    p.add_argument("--state-dir", **state)
    p = tree.command("deploy render", "write Kubernetes manifests or Prometheus alerting rules for the resource",
                     _render)
    p.add_argument("spec", type=Path, help="the resource (YAML)")
    p.add_argument("--target", choices=("kubernetes", "prometheus"), default="kubernetes",
                   help="kubernetes: the manifests (kubectl apply); prometheus: alerting rules whose thresholds are "
                        "the resource's constraints (a rules file for prometheus.yml's rule_files) "
                        "(default %(default)s)")
    p.add_argument("--image", help="kubernetes: container image with the project installed "
                                   "(default: the resource's spec.image)")
    p.add_argument("--out", type=Path, help="write here instead of standard output")
