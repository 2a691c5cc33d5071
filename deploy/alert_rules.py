"""Prometheus alerting rules for an `AdaptiveWorkflow`, with its constraints as the thresholds.

`liquid deploy render SPEC --target prometheus` writes them as a rules file (load it
with ``rule_files`` in prometheus.yml, or wrap it in a PrometheusRule). The
adaptation should keep every node inside the resource's constraints; these rules say
when it does not, for long enough that a step down or a swap in progress is not
an alert:

* a node above the morph policy's critical temperature (``max_gpu_temp_celsius`` + 5,
  where the ladder jumps to its lightest variant; 90 °C without a constraint), over
  ``max_power_watts``, with a request latency p99 over ``max_latency_ms``, or an
  accuracy under ``min_accuracy`` (each only when the resource sets it);
* requests dropped (over 5 % of those offered), morph commands acknowledged slowly
  (p99 over 1 s), dead letters, and a consumer lag that grew for 10 minutes.

The expressions are the dashboard's metrics; `tests/test_alert_rules.py` checks them
with ``promtool`` (``check rules``, and ``test rules`` on series that should and
should not fire).

>>> from deploy.workflow_spec import parse_workflow_spec
>>> wf = parse_workflow_spec("apiVersion: liquid.workflow/v1\\nkind: AdaptiveWorkflow\\nmetadata: {name: demo}\\n"
...                          "spec: {stages: [{name: infer}], constraints: {max_gpu_temp_celsius: 80}}")
>>> [(r["alert"], r["expr"]) for r in render_alert_rules(wf)["groups"][0]["rules"]][0]
('LiquidNodeTooHot', 'max by (node) (liquid_node_temperature_celsius) > 85.0')
"""

from __future__ import annotations

from morph.policy import PolicyConfig
from deploy.workflow_spec import AdaptiveWorkflow

#: How long a condition must hold before it is an alert: a step down takes a cool-down or two.
SUSTAINED = "2m"
#: Share of offered requests dropped over 5 minutes that is an alert.
MAX_DROPPED = 0.05
#: Command issued -> acknowledged, p99 over 5 minutes, that is an alert (seconds).
MAX_ROUND_TRIP_S = 1.0


def render_alert_rules(wf: AdaptiveWorkflow) -> dict:
    """A Prometheus rules file (one group, named after the resource) as a dict."""
    constraints = wf.spec.get("constraints", {})
    critical = PolicyConfig(**wf.policy_overrides()).critical_c
    rules = [_rule("LiquidNodeTooHot", f"max by (node) (liquid_node_temperature_celsius) > {critical}", "critical",
                   f"{{{{ $labels.node }}}} at {{{{ $value }}}} °C, above {critical} °C for {SUSTAINED}",
                   "where the morph policy jumps to its lightest variant: adaptation is not holding the node")]
    if "max_power_watts" in constraints:
        cap = float(constraints["max_power_watts"])
        rules.append(_rule("LiquidNodeOverPowerCap", f"max by (node) (liquid_node_power_watts) > {cap}", "warning",
                           f"{{{{ $labels.node }}}} draws {{{{ $value }}}} W, over the {cap} W cap",
                           "the resource's constraints.max_power_watts"))
    if "max_latency_ms" in constraints:
        budget = float(constraints["max_latency_ms"]) / 1000
        rules.append(_rule(
            "LiquidNodeLatencyOverBudget", "histogram_quantile(0.99, sum by (node, le) "
            f"(rate(liquid_node_request_latency_seconds_bucket[5m]))) > {budget}", "warning",
            f"{{{{ $labels.node }}}}: request latency p99 {{{{ $value }}}} s, over {budget} s",
            "the resource's constraints.max_latency_ms"))
    if "min_accuracy" in constraints:
        floor = float(constraints["min_accuracy"])
        rules.append(_rule("LiquidNodeAccuracyBelowFloor", f"avg by (node) (avg_over_time(liquid_node_accuracy[5m])) "
                           f"< {floor}", "warning",
                           f"{{{{ $labels.node }}}}: accuracy {{{{ $value }}}} over 5 minutes, under {floor}",
                           "the resource's constraints.min_accuracy, on the labelled requests served"))
    rules += [
        _rule("LiquidNodeDroppingRequests", "sum by (node) (rate(liquid_node_requests_dropped_total[5m])) / "
              "(sum by (node) (rate(liquid_node_requests_served_total[5m])) + "
              f"sum by (node) (rate(liquid_node_requests_dropped_total[5m]))) > {MAX_DROPPED}", "warning",
              "{{ $labels.node }} drops {{ $value | humanizePercentage }} of its requests",
              "deadlines missed or errors: the variant serving is too heavy for the load"),
        _rule("LiquidCommandsSlow", "histogram_quantile(0.99, sum by (le) "
              f"(rate(liquid_command_round_trip_seconds_bucket[5m]))) > {MAX_ROUND_TRIP_S}", "warning",
              "morph commands take {{ $value }} s (p99) to be acknowledged",
              "the command topic, the broker or the nodes are slow to apply decisions"),
        _rule("LiquidDeadLetters", "sum by (topic, reason) (increase(liquid_dead_letters_total[10m])) > 0", "warning",
              "{{ $value }} records of {{ $labels.topic }} went to the dead-letter topic ({{ $labels.reason }})",
              "records a flow could not read: a producer writes another schema or framing", for_="0m"),
        _rule("LiquidConsumerLagGrowing", "sum by (topic) (bytewax_kafka_consumer_lag) > 1000 and "
              "sum by (topic) (deriv(bytewax_kafka_consumer_lag[10m])) > 0", "warning",
              "the flows are {{ $value }} records behind on {{ $labels.topic }} and falling further behind",
              "a flow cannot keep up: add workers (flows.<name>.replicas) and partitions", for_="10m"),
    ]
    return {"groups": [{"name": f"liquid-{wf.name}", "rules": rules}]}


def _rule(alert: str, expr: str, severity: str, summary: str, description: str, for_: str = SUSTAINED) -> dict:
    return {"alert": alert, "expr": expr, "for": for_, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description}}
