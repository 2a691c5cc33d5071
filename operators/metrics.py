"""The flows' Prometheus metrics, defined once; ``liquid flow run --metrics-port`` serves them.

Bytewax adds its own ``bytewax_kafka_consumer_lag`` (per step, topic and
partition) to the same registry. Counters are incremented per source batch or
with label children looked up once, so the hot path pays a few hundred ns.
Per-workflow quality (`WorkflowQuality`) is kept as sums plus a bounded set of
per-workflow series, so a scrape costs the same at 5,000 workflows as at 50.
"""

from __future__ import annotations

import heapq

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

EVENTS_IN = Counter("liquid_flow_events_in", "Records read from Kafka, by topic", ["topic"])
EVENTS_OUT = Counter("liquid_flow_events_out", "Records published to Kafka, by topic", ["topic"])
DEAD_LETTERS = Counter("liquid_dead_letters", "Messages sent to the dead-letter topic", ["topic", "reason"])
DECISIONS = Counter("liquid_decisions", "Morph commands issued, by trigger and policy", ["trigger", "policy"])
COMMAND_ROUND_TRIP = Histogram("liquid_command_round_trip_seconds", "Morph command issued -> acknowledged by its node",
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
ALERTS = Counter("liquid_alerts", "Anomaly alerts published (episode opened or closed)", ["node"])


class WorkflowQuality(Collector):
    """Next-step accuracy and shadow figures of every workflow this process predicts, read when scraped.

    A gauge per workflow does not scale: at 5,000 workflows its four gauges made a
    1 MB exposition that took 130-160 ms of CPU under the GIL per scrape, a stall
    of the flow every scrape, and a dashboard of thousands of lines. So the fleet
    figures are sums (``liquid_nextstep_predictions``, ``..._top1_hits``,
    ``liquid_shadow_committed``, ...: a ratio of sums in PromQL is right across
    processes, where a mean of means is not), and per-workflow series are kept for
    at most ``per_workflow`` workflows: all of them while there are no more, else
    those with the lowest running top-1 accuracy, the ones an operator looks for.

    `observe` stores a tuple per workflow (the flow's thread); `collect` runs in the
    metrics server's thread and copies the dict first (``list(dict.items())`` is
    one step under the GIL, so no lock is needed).

    Parameters
    ----------
    per_workflow
        How many workflows get series of their own (0: none, only the sums).

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> quality = WorkflowQuality(per_workflow=1)
    >>> registry = CollectorRegistry()
    >>> registry.register(quality)
    >>> quality.observe({"workflow_id": "a", "predictions": 10, "top1": 0.9, "topk_accuracy": 1.0})
    >>> quality.observe({"workflow_id": "b", "predictions": 30, "top1": 0.5, "topk_accuracy": 0.8})
    >>> registry.get_sample_value("liquid_nextstep_top1_hits") / registry.get_sample_value("liquid_nextstep_predictions")
    0.6
    >>> [line for line in generate_latest(registry).decode().splitlines() if line.startswith("liquid_nextstep_top1_acc")]
    ['liquid_nextstep_top1_accuracy{workflow="b"} 0.5']
    """

    def __init__(self, per_workflow: int = 50):
        self.per_workflow = per_workflow
        # workflow id -> (predictions, top-1 accuracy, top-3 accuracy, shadow figures or None)
        self._by_workflow: dict[str, tuple] = {}

    def observe(self, running: dict, speculation=None) -> None:
        """A workflow's running figures: a NextStepMetrics record, and its `SpeculationMetrics` when it shadows."""
        shadow = None if speculation is None else (
            speculation.committed, speculation.rolled_back, speculation.wasted_ms / 1e3,
            (speculation.live_ms + speculation.shadow_ms) / 1e3, speculation.hit_rate, speculation.wasted_fraction)
        self._by_workflow[running["workflow_id"]] = (running["predictions"], running["top1"],
                                                     running["topk_accuracy"], shadow)

    def collect(self):
        rows = list(self._by_workflow.items())
        shadows = [row[3] for _, row in rows if row[3] is not None]
        for name, doc, value in (
                ("liquid_nextstep_workflows", "Workflows with a running next-step accuracy", len(rows)),
                ("liquid_nextstep_predictions", "Next-step predictions resolved, over all workflows",
                 sum(row[0] for _, row in rows)),
                ("liquid_nextstep_top1_hits", "Resolved predictions whose top-1 was right, over all workflows",
                 sum(row[0] * row[1] for _, row in rows)),
                ("liquid_nextstep_top3_hits", "Resolved predictions with the step in the top 3, over all workflows",
                 sum(row[0] * row[2] for _, row in rows)),
                ("liquid_shadow_committed", "Shadows committed, over all workflows", sum(s[0] for s in shadows)),
                ("liquid_shadow_rolled_back", "Shadows rolled back, over all workflows", sum(s[1] for s in shadows)),
                ("liquid_shadow_wasted_seconds", "Shadow time thrown away, over all workflows",
                 sum(s[2] for s in shadows)),
                ("liquid_shadow_step_seconds", "Step time, live and shadow, over all workflows",
                 sum(s[3] for s in shadows))):
            yield GaugeMetricFamily(name, doc, value=value)
        shown = rows if len(rows) <= self.per_workflow else heapq.nsmallest(
            self.per_workflow, rows, key=lambda item: (item[1][1], item[0]))
        which = f"per workflow, for at most {self.per_workflow} workflows (those with the lowest top-1 when more)"
        top1, top3, hit, wasted = (GaugeMetricFamily(name, f"{doc}, {which}", labels=["workflow"]) for name, doc in (
            ("liquid_nextstep_top1_accuracy", "Running top-1 accuracy of next-step predictions"),
            ("liquid_nextstep_top3_accuracy", "Running top-3 accuracy of next-step predictions"),
            ("liquid_shadow_hit_rate", "Share of ended shadows that were committed"),
            ("liquid_shadow_wasted_fraction", "Shadow work thrown away, as a share of all step time")))
        for workflow, (_, t1, t3, shadow) in shown:
            top1.add_metric([workflow], t1)
            top3.add_metric([workflow], t3)
            if shadow is not None:
                hit.add_metric([workflow], shadow[4])
                wasted.add_metric([workflow], shadow[5])
        yield from (top1, top3, hit, wasted)


WORKFLOW_QUALITY = WorkflowQuality()
REGISTRY.register(WORKFLOW_QUALITY)
