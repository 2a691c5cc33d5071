"""Kubernetes manifests for an `AdaptiveWorkflow`: flows as StatefulSets, edge workers as a DaemonSet.

Plain manifests rather than a Helm chart: everything variable is already in the
AdaptiveWorkflow resource, which `liquid deploy render` reads, so a template
language would only repeat it; the output is reviewable YAML for ``kubectl apply``
or a GitOps repository.

* The resource itself goes into a ConfigMap, mounted at ``/etc/liquid``; every
  process reads it with ``--from-spec``.
* Each flow is a StatefulSet with a headless Service of the same name. Pod K
  derives Bytewax's process id from its ordinal (the hostname's suffix) and the
  cluster addresses from the Service (``<set>-<k>.<service>:2101``), so scaling
  is a change of ``replicas`` in the resource. Recovery snapshots live on a
  persistent volume per pod; a restarted pod resumes from them.
* Probes and scraping use the flow's Prometheus port (``/metrics``).
* Edge workers run as a DaemonSet, one per labelled node, named after it; with
  ``fleet.gpu`` they ask for an NVIDIA GPU and read it through NVML.

>>> from deploy.workflow_spec import parse_workflow_spec
>>> wf = parse_workflow_spec("apiVersion: liquid.workflow/v1\\nkind: AdaptiveWorkflow\\nmetadata: {name: demo}\\n"
...                          "spec: {stages: [{name: infer}], flows: {control: {replicas: 2}}}")
>>> [(m["kind"], m["metadata"]["name"]) for m in render_kubernetes(wf)]  # doctest: +NORMALIZE_WHITESPACE
[('ConfigMap', 'demo-spec'), ('Service', 'demo-control'), ('StatefulSet', 'demo-control'),
 ('Service', 'demo-workflow'), ('StatefulSet', 'demo-workflow'), ('DaemonSet', 'demo-edge-worker')]
"""

from __future__ import annotations

import yaml

from deploy.workflow_spec import AdaptiveWorkflow

BYTEWAX_PORT = 2101
SPEC_DIR = "/etc/liquid"
RECOVERY_DIR = "/var/lib/liquid/recovery"
DEFAULT_IMAGE = "liquid-workflow:latest"


def render_kubernetes(wf: AdaptiveWorkflow, image: str | None = None) -> list[dict]:
    """Every manifest of the deployment, in apply order."""
    image = image or wf.spec.get("image", DEFAULT_IMAGE)
    manifests = [_config_map(wf)]
    for flow in wf.enabled_flows():
        manifests += [_headless_service(wf, flow), _stateful_set(wf, flow, image)]
    manifests.append(_edge_daemon_set(wf, image))
    return manifests


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's resource) as literal blocks, readable in review."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def manifests_yaml(manifests: list[dict]) -> str:
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False)


def _meta(wf: AdaptiveWorkflow, name: str, component: str) -> dict:
    meta = {"name": name, "labels": {**wf.resource["metadata"].get("labels", {}), **_selector(wf, component)}}
    if "namespace" in wf.resource["metadata"]:
        meta["namespace"] = wf.resource["metadata"]["namespace"]
    return meta


def _selector(wf: AdaptiveWorkflow, component: str) -> dict:
    return {"app.kubernetes.io/name": "liquid-workflow", "app.kubernetes.io/instance": wf.name,
            "app.kubernetes.io/component": component}


def _config_map(wf: AdaptiveWorkflow) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(wf, f"{wf.name}-spec", "spec"),
            "data": {"workflow.yaml": yaml.safe_dump(wf.resource, sort_keys=False)}}


def _headless_service(wf: AdaptiveWorkflow, flow: str) -> dict:
    settings = wf.flow_settings(flow)
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(wf, f"{wf.name}-{flow}", f"flow-{flow}"),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": _selector(wf, f"flow-{flow}"),
                     "ports": [{"name": "bytewax", "port": BYTEWAX_PORT},
                               {"name": "metrics", "port": settings["metrics_port"]}]}}


def _flow_command(wf: AdaptiveWorkflow, flow: str) -> str:
    settings, name = wf.flow_settings(flow), f"{wf.name}-{flow}"
    addresses = ";".join(f"{name}-{k}.{name}:{BYTEWAX_PORT}" for k in range(settings["replicas"]))
    return (f'exec liquid flow run {flow} --from-spec {SPEC_DIR}/workflow.yaml -w {settings["workers"]} '
            f'-i "${{HOSTNAME##*-}}" -a "{addresses}" --recovery-dir {RECOVERY_DIR} '
            f'--snapshot-interval {settings["snapshot_interval_s"]} --metrics-port {settings["metrics_port"]}')


def _stateful_set(wf: AdaptiveWorkflow, flow: str, image: str) -> dict:
    settings, name = wf.flow_settings(flow), f"{wf.name}-{flow}"
    probe = {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 10}
    container = {
        "name": flow, "image": image, "command": ["sh", "-c", _flow_command(wf, flow)],
        "ports": [{"name": "bytewax", "containerPort": BYTEWAX_PORT},
                  {"name": "metrics", "containerPort": settings["metrics_port"]}],
        "resources": {"requests": {"cpu": settings["cpu"], "memory": settings["memory"]},
                      "limits": {"memory": settings["memory"]}},
        "readinessProbe": {**probe, "initialDelaySeconds": 5},
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 6},
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
                         {"name": "recovery", "mountPath": RECOVERY_DIR}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(wf, name, f"flow-{flow}"),
        "spec": {
            "serviceName": name, "replicas": settings["replicas"], "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _selector(wf, f"flow-{flow}")},
            "template": {
                "metadata": {"labels": _selector(wf, f"flow-{flow}"),
                             "annotations": {"prometheus.io/scrape": "true",
                                             "prometheus.io/port": str(settings["metrics_port"])}},
                "spec": {"containers": [container],
                         "volumes": [{"name": "spec", "configMap": {"name": f"{wf.name}-spec"}}]},
            },
            "volumeClaimTemplates": [{"metadata": {"name": "recovery"},
                                      "spec": {"accessModes": ["ReadWriteOnce"],
                                               "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    }


def _edge_daemon_set(wf: AdaptiveWorkflow, image: str) -> dict:
    gpu = wf.spec.get("fleet", {}).get("gpu", False)
    kafka = wf.spec.get("kafka", {}).get("bootstrap", "127.0.0.1:9092")
    container = {
        "name": "edge-worker", "image": image,
        "command": ["sh", "-c", f'exec liquid worker --node "$NODE_NAME" --sensor {"nvml" if gpu else "auto"} '
                                f'--bootstrap {kafka}'],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                      "limits": {"memory": "2Gi", **({"nvidia.com/gpu": 1} if gpu else {})}},
    }
    pod = {"containers": [container]}
    if gpu:
        pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(wf, f"{wf.name}-edge-worker", "edge"),
            "spec": {"selector": {"matchLabels": _selector(wf, "edge")},
                     "template": {"metadata": {"labels": _selector(wf, "edge")}, "spec": pod}}}
