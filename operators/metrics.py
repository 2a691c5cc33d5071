"""The flows' Prometheus metrics, defined once; ``liquid flow run --metrics-port`` serves them.

Bytewax adds its own ``bytewax_kafka_consumer_lag`` (per step, topic and
partition) to the same registry. Counters are incremented per source batch or
with label children looked up once, so the hot path pays a few hundred ns.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("liquid_flow_events_in", "Records read from Kafka, by topic", ["topic"])
EVENTS_OUT = Counter("liquid_flow_events_out", "Records published to Kafka, by topic", ["topic"])
DEAD_LETTERS = Counter("liquid_dead_letters", "Messages sent to the dead-letter topic", ["topic", "reason"])
DECISIONS = Counter("liquid_decisions", "Morph commands issued, by trigger and policy", ["trigger", "policy"])
COMMAND_ROUND_TRIP = Histogram("liquid_command_round_trip_seconds", "Morph command issued -> acknowledged by its node",
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
ALERTS = Counter("liquid_alerts", "Anomaly alerts published (episode opened or closed)", ["node"])
NEXTSTEP_TOP1 = Gauge("liquid_nextstep_top1_accuracy", "Running top-1 accuracy of next-step predictions", ["workflow"])
NEXTSTEP_TOP3 = Gauge("liquid_nextstep_top3_accuracy", "Running top-3 accuracy of next-step predictions", ["workflow"])
SHADOW_HIT_RATE = Gauge("liquid_shadow_hit_rate", "Share of shadows that were committed", ["workflow"])
SHADOW_WASTED = Gauge("liquid_shadow_wasted_fraction", "Shadow work thrown away, as a share of all step time",
                      ["workflow"])
