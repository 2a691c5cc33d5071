"""Prometheus metrics: a running flow and a running worker serve them, and the values move."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.broker import free_port
from deploy.produce import produce_telemetry
from edge.thermal import Scenario
from schemas import TopicNames
from tests.conftest import ROOT, start_liquid

pytestmark = pytest.mark.broker
DASHBOARD = ROOT / "deploy" / "grafana" / "liquid-dashboard.json"


def scrape(port: int) -> dict[str, float]:
    """``{"name{label=value,...}": value}`` of every sample the endpoint serves (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def families(port: int) -> set[str]:
    """Every metric family the endpoint declares (``# TYPE`` lines), with or without samples yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return set(re.findall(r"^# TYPE (\S+) ", response.read().decode(), flags=re.M))


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for key, v in samples.items()
               if key.split("{")[0] == name and all(w in key for w in want))


def wait_for(port: int, check, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape(port)
        if samples and check(samples):
            return samples
        time.sleep(0.5)
    raise AssertionError(f"metrics on :{port} never satisfied the check; last scrape: {sorted(scrape(port))[:40]}")


def test_a_running_control_flow_and_worker_serve_metrics_that_move(kafka, zoo, tmp_path):
    flow_port, worker_port = free_port(), free_port()
    flow = start_liquid("flow", "run", "control", "--models", "--bootstrap", kafka.bootstrap,
                        "--metrics-port", flow_port, log=tmp_path / "flow.log")
    worker = start_liquid("worker", "--node", "edge-9", "--zoo", zoo.root, "--rate", "50", "--interval", "0.5",
                          "--bootstrap", kafka.bootstrap, "--metrics-port", worker_port, log=tmp_path / "worker.log")
    try:
        time.sleep(2.0)
        produce_telemetry(kafka, TopicNames(), ["edge-1"], Scenario("thermal-event", 150), speed=0,
                          follow_commands=False, start_ms=1_700_000_000_000, seed=3)
        # Bytewax sets its lag gauge from librdkafka's statistics, once a second
        first = wait_for(flow_port, lambda s: value(s, "liquid_decisions_total") > 0
                         and any(k.startswith("bytewax_kafka_consumer_lag") for k in s))
        assert value(first, "liquid_flow_events_in_total", topic="edge.telemetry") > 0
        assert value(first, "liquid_flow_events_out_total", topic="edge.commands") > 0
        produce_telemetry(kafka, TopicNames(), ["edge-2"], Scenario("steady", 30), speed=0, follow_commands=False,
                          start_ms=1_700_000_000_000, seed=4)
        wait_for(flow_port, lambda s: value(s, "liquid_flow_events_in_total", topic="edge.telemetry")
                 > value(first, "liquid_flow_events_in_total", topic="edge.telemetry"))

        before = wait_for(worker_port, lambda s: value(s, "liquid_node_requests_served_total", node="edge-9") > 0)
        after = wait_for(worker_port, lambda s: value(s, "liquid_node_requests_served_total", node="edge-9")
                         > value(before, "liquid_node_requests_served_total", node="edge-9"))
        assert value(after, "liquid_node_variant", node="edge-9", variant="transformer") == 1.0
        assert value(after, "liquid_node_request_latency_seconds_count", node="edge-9") > 0
        assert value(after, "liquid_node_temperature_celsius", node="edge-9") > 20
        declared = {re.sub(r"_(bucket|count|sum|total)$", "", name)
                    for name in families(flow_port) | families(worker_port)}
    finally:
        for proc in (flow, worker):
            proc.terminate()
            proc.wait(30)
    # every metric the Grafana dashboard plots is one that flows or workers declare
    plotted = {re.sub(r"_(bucket|count|sum|total)$", "", name)
               for name in re.findall(r"\b((?:liquid|bytewax)_[a-z0-9_]+)", DASHBOARD.read_text())}
    assert json.loads(DASHBOARD.read_text())["panels"] and plotted
    assert plotted <= declared, f"the dashboard plots metrics nothing declares: {sorted(plotted - declared)}"
