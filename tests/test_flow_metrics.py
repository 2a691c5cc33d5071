"""The workflow flow's quality metrics: sums over every workflow, series for a bounded few."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fingerprint.traces import MarkovProcess
from operators import metrics
from operators.events import Event
from operators.metrics import WorkflowQuality
from operators.workflow import NextStepStep
from prediction.nextstep import NextStepPredictor
from prediction.speculation import SpeculationMetrics

# Workflows that differ in how predictable they are: the first always goes a -> b -> c.
TRANSITIONS = [
    {("<start>",): {"a": 1.0}, ("a",): {"b": 1.0}, ("b",): {"c": 1.0}, ("c",): {"<end>": 1.0}},
    {("<start>",): {"a": 1.0}, ("a",): {"b": 0.6, "c": 0.4}, ("b",): {"c": 1.0}, ("c",): {"<end>": 1.0}},
    {("<start>",): {"a": 0.5, "b": 0.5}, ("a",): {"b": 0.5, "c": 0.5}, ("b",): {"c": 0.5, "<end>": 0.5},
     ("c",): {"<end>": 1.0}},
    {("<start>",): {"a": 0.4, "b": 0.3, "c": 0.3}, ("a",): {"b": 0.4, "c": 0.3, "<end>": 0.3},
     ("b",): {"a": 0.3, "c": 0.4, "<end>": 0.3}, ("c",): {"a": 0.3, "b": 0.3, "<end>": 0.4}},
]


def fresh(per_workflow: int, monkeypatch) -> tuple[WorkflowQuality, CollectorRegistry]:
    quality, registry = WorkflowQuality(per_workflow=per_workflow), CollectorRegistry()
    registry.register(quality)
    monkeypatch.setattr(metrics, "WORKFLOW_QUALITY", quality)
    return quality, registry


def series(registry: CollectorRegistry, name: str) -> dict[str, float]:
    """``{workflow: value}`` of a per-workflow family."""
    return {s.labels["workflow"]: s.value for family in registry.collect() if family.name == name
            for s in family.samples}


def test_the_flow_step_reports_sums_over_every_workflow_and_series_for_the_least_accurate(monkeypatch):
    _, registry = fresh(2, monkeypatch)
    step = NextStepStep(lambda workflow: NextStepPredictor(workflow, metrics_interval_ms=2000))
    states, last = {}, {}
    for i, transitions in enumerate(TRANSITIONS):
        workflow = f"wf-{i}"
        for signal in MarkovProcess(transitions, workflow_id=workflow).signals(120, seed=i):
            states[workflow], outputs = step(states.get(workflow), Event("WorkflowSignal", signal, "s", 0, 0))
            last.update((r["workflow_id"], r) for schema, r in outputs if schema == "NextStepMetrics")
    assert set(last) == {f"wf-{i}" for i in range(len(TRANSITIONS))}

    value = registry.get_sample_value
    assert value("liquid_nextstep_workflows") == len(last)
    predictions = sum(r["predictions"] for r in last.values())
    assert value("liquid_nextstep_predictions") == predictions
    assert value("liquid_nextstep_top1_hits") == pytest.approx(sum(r["top1"] * r["predictions"] for r in last.values()))
    assert value("liquid_nextstep_top3_hits") == pytest.approx(
        sum(r["topk_accuracy"] * r["predictions"] for r in last.values()))
    # Two series, the two workflows with the lowest top-1 as last published; the predictable one is not among them.
    lowest = sorted(last, key=lambda w: last[w]["top1"])[:2]
    assert series(registry, "liquid_nextstep_top1_accuracy") == {w: last[w]["top1"] for w in lowest}
    assert set(series(registry, "liquid_nextstep_top3_accuracy")) == set(lowest)
    assert last["wf-0"]["top1"] > 0.9 and "wf-0" not in lowest
    assert series(registry, "liquid_shadow_hit_rate") == {}  # nothing shadowed


def test_five_thousand_workflows_scrape_as_a_bounded_exposition_with_exact_sums(monkeypatch):
    quality, registry = fresh(50, monkeypatch)
    committed = rolled_back = 0
    for i in range(5000):
        shadows = SpeculationMetrics(committed=i % 7, rolled_back=i % 3, wasted_ms=10.0, live_ms=80.0, shadow_ms=20.0)
        committed, rolled_back = committed + shadows.committed, rolled_back + shadows.rolled_back
        quality.observe({"workflow_id": f"wf-{i:04d}", "predictions": 10, "top1": (i % 1000) / 1000,
                         "topk_accuracy": 1.0}, shadows)
    text = generate_latest(registry).decode()
    # Every per-workflow family has 50 series, the lowest top-1 (0.0, 0.001, ...: five workflows each).
    per_workflow = {f.name: len(f.samples) for f in text_string_to_metric_families(text) if f.name in (
        "liquid_nextstep_top1_accuracy", "liquid_nextstep_top3_accuracy", "liquid_shadow_hit_rate",
        "liquid_shadow_wasted_fraction")}
    assert per_workflow == dict.fromkeys(per_workflow, 50) and len(per_workflow) == 4
    assert max(series(registry, "liquid_nextstep_top1_accuracy").values()) == 0.009
    assert len(text) < 20_000  # a gauge per workflow made ~1 MB here
    value = registry.get_sample_value
    assert value("liquid_nextstep_workflows") == 5000 and value("liquid_nextstep_predictions") == 50_000
    assert value("liquid_shadow_committed") == committed and value("liquid_shadow_rolled_back") == rolled_back
    assert value("liquid_shadow_wasted_seconds") == pytest.approx(5000 * 0.01)
    assert value("liquid_shadow_wasted_seconds") / value("liquid_shadow_step_seconds") == pytest.approx(0.1)
    # A workflow's series carries its own figures.
    shown = series(registry, "liquid_shadow_hit_rate")
    assert shown["wf-1000"] == SpeculationMetrics(committed=1000 % 7, rolled_back=1000 % 3).hit_rate
