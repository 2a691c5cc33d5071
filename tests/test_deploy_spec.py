"""AdaptiveWorkflow resources: validation with precise errors, Kubernetes manifests, and `liquid deploy` on this machine."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.deploy_cmd import _alive, apply, delete, scrape_lag, status
from deploy.errors import UsageError
from deploy.kubernetes import render_kubernetes
from deploy.workflow_spec import load_workflow_spec, parse_workflow_spec
from tests.conftest import ROOT, run_liquid

EXAMPLE = ROOT / "deploy" / "examples" / "inspection.yaml"
KUBERNETES_VERSION = "1.30"


def example(**changes) -> dict:
    resource = yaml.safe_load(EXAMPLE.read_text())
    for dotted, value in changes.items():
        node = resource
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return resource


@pytest.mark.parametrize("changes,error", [
    ({"kind": "Workflow"}, "kind: 'AdaptiveWorkflow' was expected"),
    ({"spec__constraints__max_latency_ms": -5}, "spec.constraints.max_latency_ms: -5 is less than or equal to the minimum of 0"),
    ({"spec__constraints__max_power_w": 100}, "spec.constraints: Additional properties are not allowed ('max_power_w' was unexpected)"),
    ({"spec__adaptation__policy": "magic"}, "spec.adaptation.policy: 'magic' is not one of ['rules', 'rli']"),
    ({"metadata__name": "Inspection_1"}, "metadata.name: 'Inspection_1' does not match"),
    ({"spec__flows__control__replicas": 0}, "spec.flows.control.replicas: 0 is less than the minimum of 1"),
])
def test_a_bad_resource_is_one_error_that_names_where(changes, error):
    with pytest.raises(UsageError) as err:
        parse_workflow_spec(yaml.safe_dump(example(**changes)), source="bad.yaml")
    assert str(err.value).startswith("bad.yaml: ") and error in str(err.value) and "\n" not in str(err.value)


def test_not_yaml_at_all_says_where():
    with pytest.raises(UsageError, match=r"bad.yaml: not valid YAML at line 2"):
        parse_workflow_spec("apiVersion: x\n  kind: [\n", source="bad.yaml")


def test_the_cli_reports_a_bad_resource_in_one_line_with_status_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(example(spec__constraints__min_accuracy=2)))
    proc = run_liquid("deploy", "validate", path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "spec.constraints.min_accuracy" in proc.stderr


def test_constraints_reach_the_policy_and_the_flows():
    wf = load_workflow_spec(EXAMPLE)
    control, workflow = wf.flow_spec("control"), wf.flow_spec("workflow")
    assert (control.policy["hot_c"], control.policy["critical_c"], control.policy["recover_c"]) == (85.0, 90.0, 78.0)
    assert control.options["constraints"] == {"max_latency_ms": 100, "min_accuracy": 0.9, "max_gpu_temp_celsius": 85,
                                              "max_power_watts": 250}
    assert control.models and workflow.options["speculation"] and not workflow.models


def test_rendered_manifests_are_valid_kubernetes_objects():
    manifests = render_kubernetes(load_workflow_spec(EXAMPLE), image="registry.example/liquid:0.1")
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    kinds = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert ("StatefulSet", "inspection-control") in kinds and ("DaemonSet", "inspection-edge-worker") in kinds
    broken = json.loads(json.dumps(manifests[2]))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_each_pod_derives_its_process_id_and_the_cluster_from_the_service():
    wf = parse_workflow_spec(yaml.safe_dump(example(spec__flows__control__replicas=3)))
    sts = next(m for m in render_kubernetes(wf) if m["kind"] == "StatefulSet" and m["metadata"]["name"] == "inspection-control")
    command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
    shown = subprocess.run([*command[:2], command[2].replace("exec liquid", "echo")], capture_output=True,
                           text=True, env={"HOSTNAME": "inspection-control-2", "PATH": "/usr/bin:/bin"}).stdout
    assert "-i 2 " in shown
    assert ("-a inspection-control-0.inspection-control:2101;inspection-control-1.inspection-control:2101;"
            "inspection-control-2.inspection-control:2101") in shown
    assert sts["spec"]["serviceName"] == "inspection-control" and sts["spec"]["replicas"] == 3


@pytest.mark.broker
def test_apply_is_idempotent_restarts_only_what_changed_and_status_scrapes_lag(broker, tmp_path):
    from deploy.broker import free_port
    from deploy.produce import produce_telemetry
    from edge.thermal import Scenario
    from schemas import TopicNames
    from schemas.kafka import KafkaSettings

    port = free_port()
    resource = example(spec__kafka__bootstrap=broker.bootstrap, spec__flows__control__metrics_port=port,
                       spec__flows__workflow__metrics_port=free_port())
    state_dir = tmp_path / "deployments"
    said: list[str] = []
    try:
        wf = parse_workflow_spec(yaml.safe_dump(resource))
        assert apply(wf, state_dir, say=said.append) == {"control": "started", "workflow": "started"}
        assert apply(wf, state_dir, say=said.append) == {"control": "unchanged", "workflow": "unchanged"}
        changed = parse_workflow_spec(yaml.safe_dump({**resource, "spec": {
            **resource["spec"], "constraints": {**resource["spec"]["constraints"], "max_gpu_temp_celsius": 80}}}))
        assert apply(changed, state_dir, say=said.append) == {"control": "restarted", "workflow": "unchanged"}
        produce_telemetry(KafkaSettings(broker.bootstrap), TopicNames(), ["edge-1", "edge-2"], Scenario("steady", 30),
                          speed=0, follow_commands=False, start_ms=1_700_000_000_000)
        deadline = time.monotonic() + 60
        while (lag := scrape_lag(port)) in (None, {}) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not lag:  # say why: is the restarted flow alive, and what did it print?
            control = json.loads((state_dir / "inspection" / "deployment.json").read_text())["flows"]["control"]
            log = Path(control["log"]).read_text(errors="replace")[-4000:]
            pytest.fail(f"no lag from the control flow on port {port} in 60 s; alive: {_alive(control['pid'])}\n{log}")
        assert all(key.startswith("edge.") for key in lag), lag  # the control flow's own partitions
        rows = status(state_dir, say=said.append)
        assert {r["flow"]: r["running"] for r in rows} == {"control": True, "workflow": True}
    finally:
        delete("inspection", state_dir, say=said.append)
    assert not any(r["running"] for r in status(state_dir, say=said.append))


def test_the_agent_takes_the_resources_constraints():
    from operators.from_spec import constraints_for

    wf = parse_workflow_spec(yaml.safe_dump(example(spec__adaptation__policy="rli")))
    control = wf.flow_spec("control")
    assert control.options["policy_kind"] == "rli"
    c = constraints_for(control)
    assert (c.max_latency_ms, c.min_accuracy, c.max_gpu_temp_c, c.max_power_w, c.critical_temp_c) == \
        (100.0, 0.9, 85.0, 250.0, 90.0)


def test_partitions_are_as_given_or_one_per_worker_of_the_largest_flow():
    bare = example()
    del bare["spec"]["topics"]["partitions"]
    bare["spec"]["flows"] = {"control": {"workers": 1}, "workflow": {"workers": 1}}
    assert parse_workflow_spec(yaml.safe_dump(bare)).partitions() == 1
    bare["spec"]["flows"]["workflow"] = {"workers": 2, "replicas": 3}
    assert parse_workflow_spec(yaml.safe_dump(bare)).partitions() == 6
    bare["spec"]["flows"]["workflow"]["enabled"] = False   # a flow that does not run reads nothing
    assert parse_workflow_spec(yaml.safe_dump(bare)).partitions() == 1
    bare["spec"]["topics"]["partitions"] = 4
    assert parse_workflow_spec(yaml.safe_dump(bare)).partitions() == 4


@pytest.mark.parametrize("sync,error", [
    ({"conflicts": {"execution": "manual"}}, "spec.sync: 'store' is a required property"),
    ({"store": "c.db", "conflicts": {"execution": "newest"}}, "spec.sync.conflicts.execution: 'newest' is not one of"),
    ({"store": "c.db", "conflicts": {"runs": "manual"}}, "spec.sync.conflicts: 'runs' is not one of"),
])
def test_a_bad_sync_block_is_refused_with_where(sync, error):
    with pytest.raises(UsageError) as err:
        parse_workflow_spec(yaml.safe_dump(example(spec__sync=sync)), source="bad.yaml")
    assert error in str(err.value), str(err.value)


def test_the_sync_flow_runs_only_with_a_central_store():
    assert "sync" not in load_workflow_spec(EXAMPLE).enabled_flows()
    wf = parse_workflow_spec(yaml.safe_dump(example(spec__sync={"store": "/data/central.db",
                                                                  "conflicts": {"default": "central_wins"}})))
    assert wf.enabled_flows() == ["control", "workflow", "sync"]
    sync = wf.flow_spec("sync")
    assert (sync.name, sync.options["store"], sync.options["conflicts"]) == ("sync", "/data/central.db",
                                                                           {"default": "central_wins"})
    off = parse_workflow_spec(yaml.safe_dump(example(spec__sync={"store": "/data/central.db"},
                                                     spec__flows__sync={"enabled": False})))
    assert "sync" not in off.enabled_flows()


@pytest.mark.broker
def test_apply_starts_updates_and_stops_the_sync_flow_with_the_resource(broker, tmp_path):
    """Only the sync flow runs here (the others disabled), so the machine runs one Bytewax process."""
    from confluent_kafka import Producer

    from deploy.broker import free_port
    from fingerprint.store import CentralExecutions
    from schemas import TopicNames
    from schemas.codec import Codec
    from schemas.kafka import KafkaSettings

    store = tmp_path / "central.db"
    resource = example(spec__kafka__bootstrap=broker.bootstrap, spec__flows__control__enabled=False,
                       spec__flows__workflow__enabled=False, spec__flows__sync__metrics_port=free_port(),
                       spec__sync={"store": str(store)})
    state_dir = tmp_path / "deployments"
    said: list[str] = []
    try:
        wf = parse_workflow_spec(yaml.safe_dump(resource))
        assert apply(wf, state_dir, say=said.append) == {"sync": "started"}
        assert apply(wf, state_dir, say=said.append) == {"sync": "unchanged"}
        # The running flow takes a node's execution record into the central store.
        record = {"record_id": "execution:run-1@1", "entity": "execution", "entity_id": "run-1",
                  "execution_id": "run-1", "workflow_id": "inspection", "node_id": "edge-1", "status": "failed",
                  "modified_ms": 1, "edge_version": 1, "central_seen_ms": 0, "fields": {}}
        producer = Producer(KafkaSettings(broker.bootstrap).producer())
        producer.produce(TopicNames().executions, key=b"edge-1", value=Codec().encode("ExecutionRecord", record))
        assert producer.flush(10) == 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (store.exists() and CentralExecutions(str(store)).get("execution", "run-1")):
            time.sleep(0.5)
        assert CentralExecutions(str(store)).get("execution", "run-1")["status"] == "failed"
        resource["spec"]["sync"]["conflicts"] = {"execution": "manual"}
        assert apply(parse_workflow_spec(yaml.safe_dump(resource)), state_dir, say=said.append) == {"sync": "restarted"}
        state = json.loads((state_dir / "inspection" / "deployment.json").read_text())
        assert json.loads(state["flows"]["sync"]["spec"])["options"]["conflicts"] == {"execution": "manual"}
        pid = state["flows"]["sync"]["pid"]
        del resource["spec"]["sync"]
        assert apply(parse_workflow_spec(yaml.safe_dump(resource)), state_dir, say=said.append) == {"sync": "stopped"}
        assert [r["flow"] for r in status(state_dir, say=said.append)] == []
        assert not _alive(pid)
    finally:
        delete("inspection", state_dir, say=said.append)


def test_a_central_store_renders_a_sync_statefulset_too():
    wf = parse_workflow_spec(yaml.safe_dump(example(spec__sync={"store": "postgresql://central/liquid"})))
    manifests = render_kubernetes(wf, image="registry.example/liquid:0.1")
    sync = next(m for m in manifests if m["kind"] == "StatefulSet" and m["metadata"]["name"] == "inspection-sync")
    kubernetes_validate.validate(sync, KUBERNETES_VERSION, strict=True)
    assert "flow run sync" in " ".join(sync["spec"]["template"]["spec"]["containers"][0]["command"])
    assert not any(m["metadata"]["name"] == "inspection-sync" for m in render_kubernetes(load_workflow_spec(EXAMPLE)))
