"""`AdaptiveWorkflow`: a deployment of Liquid Workflow as one YAML resource, validated, turned into flow specs.

The shape follows the seed paper's §5.2 resource: the workflow's ``stages``, how
it ``adaptation``-s, its ``constraints`` (``max_latency_ms``, ``min_accuracy``,
``max_gpu_temp_celsius``, ``max_power_watts``), the ``fleet`` and its groups, the
``topics``, the ``kafka`` cluster and the ``flows`` that run it. The JSON Schema
shipped beside this module (``adaptive_workflow.schema.json``) is the contract;
`load_workflow_spec` reports the first violation with its path.

With a ``sync`` block naming a central ``store`` (SQLite path or PostgreSQL DSN),
the resource also runs the sync flow (``liquid flow run sync --store ...``: the
nodes' execution records kept centrally, each answered); without one, no sync
flow runs and the nodes keep their records locally.

The constraints reach the decisions: ``max_gpu_temp_celsius`` is the morph
policy's step-down threshold (its 90 °C-style critical jump 5 °C above, recovery
7 °C below), and all four travel to the flows in ``options["constraints"]`` for
the learned agent.

>>> spec = parse_workflow_spec('''
... apiVersion: liquid.workflow/v1
... kind: AdaptiveWorkflow
... metadata: {name: inspection}
... spec:
...   stages: [{name: ingest}, {name: inference, model: {variants: [transformer, cnn, snn]}}]
...   constraints: {max_gpu_temp_celsius: 80, max_latency_ms: 50}
... ''', source="inspection.yaml")
>>> control = spec.flow_spec("control")
>>> control.policy["hot_c"], control.policy["critical_c"], control.options["constraints"]["max_latency_ms"]
(80.0, 85.0, 50)
>>> spec.enabled_flows()
['control', 'workflow']
>>> with_store = parse_workflow_spec('''
... apiVersion: liquid.workflow/v1
... kind: AdaptiveWorkflow
... metadata: {name: inspection}
... spec:
...   stages: [{name: ingest}]
...   sync: {store: /var/lib/liquid/central.db, conflicts: {execution: manual}}
... ''', source="inspection.yaml")
>>> with_store.enabled_flows(), with_store.flow_spec("sync").options["store"]
(['control', 'workflow', 'sync'], '/var/lib/liquid/central.db')
>>> parse_workflow_spec("apiVersion: liquid.workflow/v1\\nkind: AdaptiveWorkflow\\nmetadata: {name: x}\\n"
...                     "spec: {stages: [{name: a}], constraints: {min_accuracy: 1.5}}", source="bad.yaml")
Traceback (most recent call last):
...
deploy.errors.UsageError: bad.yaml: spec.constraints.min_accuracy: 1.5 is greater than the maximum of 1
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

from deploy.errors import UsageError
from flows.spec import FlowSpec

SCHEMA_PATH = Path(__file__).with_name("adaptive_workflow.schema.json")
FLOW_NAMES = ("control", "workflow", "sync")
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@lru_cache(maxsize=1)
def workflow_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@dataclass(frozen=True)
class AdaptiveWorkflow:
    """A validated AdaptiveWorkflow resource."""

    resource: dict

    @property
    def name(self) -> str:
        return self.resource["metadata"]["name"]

    @property
    def spec(self) -> dict:
        return self.resource["spec"]

    @property
    def digest(self) -> str:
        """Content digest: equal for equal resources, whatever their key order."""
        return hashlib.sha256(json.dumps(self.resource, sort_keys=True).encode()).hexdigest()[:16]

    def flow_settings(self, flow: str) -> dict:
        """The ``flows.<flow>`` block with the schema's defaults filled in."""
        defaults = {k: v["default"] for k, v in workflow_schema()["$defs"]["flow"]["properties"].items()
                    if "default" in v}
        return {**defaults, **self.spec.get("flows", {}).get(flow, {})}

    def enabled_flows(self) -> list[str]:
        """The flows the resource runs: the sync flow only when it names a central store."""
        return [f for f in FLOW_NAMES if self.flow_settings(f)["enabled"] and (f != "sync" or self.central_store)]

    @property
    def central_store(self) -> str | None:
        """The central execution store (``spec.sync.store``), or None when the nodes keep their records."""
        return self.spec.get("sync", {}).get("store")

    def partitions(self) -> int:
        """Partitions per topic: ``topics.partitions``, or by default one per Bytewax worker of the
        largest flow (``workers`` × ``replicas``), the most that can read a topic in parallel.

        Bytewax reads every partition with a consumer of its own, fetching from the broker
        whether or not records arrive: partitions beyond the workers add requests, not
        parallelism. Measured with bench/scale.py at 200 nodes on the embedded broker: 1,231
        requests/s with 4 partitions (928 of them the flows' fetches, the broker at 0.49 of a
        core) against 430-518 with one (0.25-0.30 of a core). An earlier default of 4 rested on
        decisions that slowed down with one partition; the cause was the producers' requests of
        a record or two (README, scale notes), not the partition count.
        """
        given = self.spec.get("topics", {}).get("partitions")
        if given is not None:
            return given
        settings = [self.flow_settings(f) for f in self.enabled_flows()]
        return max(s["workers"] * s["replicas"] for s in settings)

    def nodes(self) -> list[str]:
        return [n for g in self.spec.get("fleet", {}).get("groups", []) for n in g["nodes"]]

    def policy_overrides(self) -> dict:
        """`morph.policy.PolicyConfig` settings the resource implies."""
        adaptation, constraints = self.spec.get("adaptation", {}), self.spec.get("constraints", {})
        policy = {k: float(adaptation[k]) for k in ("cooldown_s", "recover_cooldown_s", "forecast_horizon_s")
                  if k in adaptation}
        if "max_gpu_temp_celsius" in constraints:
            hot = float(constraints["max_gpu_temp_celsius"])
            policy.update(hot_c=hot, critical_c=hot + 5.0, recover_c=hot - 7.0)
        return policy

    def flow_spec(self, flow: str) -> FlowSpec:
        """The `FlowSpec` of one of the resource's flows."""
        if flow not in FLOW_NAMES:
            raise UsageError(f"unknown flow {flow!r}; an AdaptiveWorkflow runs {', '.join(FLOW_NAMES)}")
        kafka, adaptation = self.spec.get("kafka", {}), self.spec.get("adaptation", {})
        topics = {k: v for k, v in self.spec.get("topics", {}).items() if k != "partitions"}
        options: dict = {"workflow": self.name}
        if flow == "control":  # the adaptation's inputs: the workflow flow does not depend on them
            options["constraints"] = dict(self.spec.get("constraints", {}))
            if adaptation.get("policy", "rules") == "rli":
                options.update(policy_kind="rli", peer_groups=max(1, len(self.spec.get("fleet", {}).get("groups", []))))
        elif flow == "sync":
            sync = self.spec.get("sync", {})
            options.update({k: v for k, v in (("store", sync.get("store")), ("conflicts", sync.get("conflicts")),
                                              ("signing_key", sync.get("signing_key"))) if v})
        elif adaptation.get("speculation"):
            options["speculation"] = True
        return FlowSpec(name=flow, bootstrap=kafka.get("bootstrap", DEFAULT_BOOTSTRAP),
                        kafka_config={k: str(v) for k, v in kafka.get("config", {}).items()}, topics=topics,
                        registry_url=kafka.get("registry_url"),
                        models=flow == "control" and adaptation.get("models", True),
                        policy=self.policy_overrides() if flow == "control" else {}, options=options)


def parse_workflow_spec(text: str, source: str = "<spec>") -> AdaptiveWorkflow:
    """Parse and validate a resource's YAML; a `UsageError` names the first violation and where it is."""
    try:
        resource = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{source}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    validator = jsonschema.Draft202012Validator(workflow_schema())
    errors = sorted(validator.iter_errors(resource), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UsageError(f"{source}: {where}: {first.message}{more}")
    return AdaptiveWorkflow(resource)


def load_workflow_spec(path: Path) -> AdaptiveWorkflow:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    return parse_workflow_spec(text, source=str(path))
