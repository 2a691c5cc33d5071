"""An edge worker's Prometheus metrics, read from the worker's own state when scraped.

A collector rather than counters bumped on the serving path: the worker already
keeps exact figures (the request load's counts and latency buckets, each node's
handled commands, its shadow executor's stats, the last telemetry it sent), so a
scrape reads them and serving pays nothing. ``liquid worker --metrics-port``
registers it and serves ``/metrics``.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector


class WorkerCollector(Collector):
    """Metrics of every node of an `edge.worker.EdgeWorker`."""

    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        served = CounterMetricFamily("liquid_node_requests_served", "Inference requests served", labels=["node"])
        dropped = CounterMetricFamily("liquid_node_requests_dropped", "Requests dropped (deadline missed or error)",
                                      labels=["node"])
        latency = HistogramMetricFamily("liquid_node_request_latency_seconds", "Latency of served requests",
                                        labels=["node"])
        swaps = CounterMetricFamily("liquid_node_swaps", "Morph commands handled, by outcome", labels=["node", "status"])
        variant = GaugeMetricFamily("liquid_node_variant", "1 for the variant and precision the node serves now",
                                    labels=["node", "variant", "precision"])
        temperature = GaugeMetricFamily("liquid_node_temperature_celsius", "Accelerator temperature", labels=["node"])
        power = GaugeMetricFamily("liquid_node_power_watts", "Accelerator power draw", labels=["node"])
        shadows = CounterMetricFamily("liquid_node_shadows", "Shadow pre-executions ended, by outcome",
                                      labels=["node", "outcome"])
        # what the learned agent's reward is computed from, as the node's last telemetry reported it
        load = {key: GaugeMetricFamily(name, doc, labels=["node"]) for key, name, doc in (
            ("offered_rps", "liquid_node_offered_requests_per_second", "Requests arriving per second"),
            ("queue_len", "liquid_node_queue_length", "Requests arrived but not yet started"),
            ("capacity_rps", "liquid_node_capacity_requests_per_second",
             "Requests per second of serving time: what the current configuration could serve"),
            ("energy_j_per_inference", "liquid_node_energy_joules_per_inference", "Energy per served request"),
            ("accuracy", "liquid_node_accuracy", "Share of the labelled requests served over the last second answered right"),
            ("confidence", "liquid_node_confidence",
             "Mean top-1 softmax probability over the last second's requests (a confidence proxy, no labels needed)"))}
        for node_id, node in self.worker.nodes.items():
            stats = node.load.stats()
            served.add_metric([node_id], stats.served)
            dropped.add_metric([node_id], stats.dropped)
            buckets, total_s = node.load.latency_histogram()
            latency.add_metric([node_id], buckets=[(_le(b), n) for b, n in buckets], sum_value=total_s)
            for status, n in Counter(ack["status"] for _, ack in node.applied).items():
                swaps.add_metric([node_id, status], n)
            current = node.server.current
            variant.add_metric([node_id, current.variant, current.precision], 1.0)
            last = self.worker.last_telemetry.get(node_id)
            if last is not None:
                temperature.add_metric([node_id], last["gpu_temp_c"])
                power.add_metric([node_id], last["power_w"])
                for key, gauge in load.items():
                    if last.get(key) is not None:
                        gauge.add_metric([node_id], last[key])
            if node.executor is not None:
                shadow_stats = node.executor.stats
                shadows.add_metric([node_id, "committed"], shadow_stats.committed)
                shadows.add_metric([node_id, "rolled_back"], sum(shadow_stats.rolled_back.values()))
        yield from (served, dropped, latency, swaps, variant, temperature, power, shadows, *load.values())


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
