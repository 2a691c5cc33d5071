"""The Grafana dashboard's queries, run by a real Prometheus over a running control flow, workflow flow and worker.

Prometheus is Debian's package (`.ci/run` installs it); the test is skipped, saying why,
where its binary is missing. Every panel's PromQL must evaluate without an error, and the
panels whose sources ran here must show data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from deploy.broker import free_port
from deploy.produce import produce_signals, produce_telemetry
from edge.thermal import Scenario
from fingerprint.traces import MarkovProcess
from schemas import TopicNames
from tests.conftest import start_liquid
from tests.support import wait_until
from tests.test_metrics import DASHBOARD

pytestmark = [pytest.mark.broker,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="no Prometheus server here (Debian package prometheus)")]
WORKFLOW = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 0.7, "c": 0.3}, ("b",): {"c": 1.0},
                          ("c",): {"<end>": 1.0}}, workflow_id="inspection")
#: Panels whose sources all ran here, by the start of their title: they must show data. The rest
#: (dead letters, swaps of a node no command went to, alerts, shadows: no speculating flow) need
#: only evaluate.
MUST_SHOW = ("Events in / out", "Consumer lag", "Decisions by trigger", "Nodes serving each variant", "Temperature",
             "Power", "Requests served", "Request latency", "Next-step running accuracy", "Kafka requests")


def query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:  # a bad query is a 400 with the error in the body
        return json.load(err)


def test_every_dashboard_query_runs_on_a_real_prometheus(kafka, zoo, tmp_path):
    control, workflow, worker, prom = (free_port() for _ in range(4))
    dashboard = json.loads(DASHBOARD.read_text())
    topics = TopicNames()
    procs = [start_liquid("flow", "run", "control", "--models", "--bootstrap", kafka.bootstrap,
                          "--metrics-port", control, log=tmp_path / "control.log"),
             start_liquid("flow", "run", "workflow", "--metrics-interval", "1", "--bootstrap", kafka.bootstrap,
                          "--metrics-port", workflow, log=tmp_path / "workflow.log"),
             start_liquid("worker", "--node", "edge-9", "--zoo", zoo.root, "--rate", "50", "--interval", "0.5",
                          "--bootstrap", kafka.bootstrap, "--metrics-port", worker, log=tmp_path / "worker.log")]
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: liquid\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{control}', '127.0.0.1:{workflow}', '127.0.0.1:{worker}']\n")
    procs.append(subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom}"], stdout=open(tmp_path / "prometheus.log", "w"),
        stderr=subprocess.STDOUT))
    try:
        time.sleep(2.0)
        produce_telemetry(kafka, topics, ["edge-1"], Scenario("thermal-event", 150), speed=0,
                          follow_commands=False, start_ms=1_700_000_000_000, seed=3)
        produce_signals(kafka, topics.signals, WORKFLOW.signals(200, seed=1, t0_ms=1_700_000_000_000))

        def shows(expr: str) -> bool:
            answer = query(prom, expr)
            return answer.get("status") == "success" and bool(answer["data"]["result"])

        # what the slowest panels need: a decision, a published accuracy, and two scrapes of each for rate()
        assert wait_until(lambda: shows("liquid_decisions_total") and shows("liquid_nextstep_predictions > 0")
                          and shows("liquid_node_requests_served_total"), 120), "Prometheus never scraped the figures"
        time.sleep(3.0)
        panels = dashboard["panels"]
        answers = {(panel["title"], target["expr"]): query(prom, target["expr"].replace("$node", ".*"))
                   for panel in panels for target in panel["targets"]}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)

    errors = {key: answer.get("error") for key, answer in answers.items() if answer.get("status") != "success"}
    assert not errors, errors
    empty = [title for title in {title for title, _ in answers} if title.startswith(MUST_SHOW)
             and not any(answer["data"]["result"] for (t, _), answer in answers.items() if t == title)]
    assert not empty, f"panels without data: {empty}"
    # the panels named above are the dashboard's, not a list that drifted from it
    titles = [panel["title"] for panel in panels]
    assert all(any(title.startswith(prefix) for title in titles) for prefix in MUST_SHOW)
    # the node selector's query names a metric the workers serve
    [node_variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "node"]
    assert "liquid_node_temperature_celsius" in node_variable["definition"]
