"""Operational commands: the broker, topics, multi-process flows, WfCommons replay, NVML sensors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import types

import pytest

from deploy.broker import free_port
from deploy.replay import read_topic
from schemas import TopicNames
from tests.conftest import ROOT, liquid_cmd, run_liquid

TOPICS = TopicNames()


@pytest.mark.broker
def test_liquid_broker_answers_and_stops_cleanly_on_sigterm():
    from confluent_kafka.admin import AdminClient

    port = free_port()
    proc = subprocess.Popen(liquid_cmd("broker", "--port", port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert f"bootstrap 127.0.0.1:{port}" in line
        AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=5)
        busy = run_liquid("broker", "--port", port, check=False, timeout=30)
        assert busy.returncode == 2 and "already in use" in busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "broker stopped" in out


@pytest.mark.broker
def test_topics_create_is_idempotent(broker):
    first = run_liquid("topics", "create", "--partitions", "3", "--bootstrap", broker.bootstrap).stdout
    assert first.count("created (3 partitions)") == len(TOPICS.all())
    second = run_liquid("topics", "create", "--bootstrap", broker.bootstrap).stdout
    assert second.count("exists (3 partitions)") == len(TOPICS.all())
    listed = run_liquid("topics", "list", "--bootstrap", broker.bootstrap).stdout
    assert "edge.telemetry\t3 partitions" in listed


@pytest.mark.broker
def test_two_processes_make_the_same_commands_as_one_worker(kafka):
    from deploy.produce import produce_telemetry
    from edge.thermal import Scenario

    produce_telemetry(kafka, TOPICS, [f"edge-{i}" for i in range(6)], Scenario("thermal-event", 150), speed=0,
                      follow_commands=False, start_ms=1_700_000_000_000, seed=9)
    run_liquid("flow", "run", "control", "-p", "2", "--until-end", "--bootstrap", kafka.bootstrap, timeout=180)
    one = one_worker_replay(kafka)
    assert len(one) > 20 and commands_by_id(kafka, TOPICS.commands) == one


def commands_by_id(kafka, topic: str) -> dict:
    return {c["command_id"]: c["to_variant"] for c in read_topic(kafka, topic) if "command_id" in c}


def one_worker_replay(kafka) -> dict:
    """The commands one worker makes of the telemetry topic (a replay through the control flow)."""
    run_liquid("replay", "--topic", TOPICS.telemetry, "--flow", "control", "--bootstrap", kafka.bootstrap)
    return commands_by_id(kafka, TOPICS.commands + ".replay")


@pytest.mark.broker
def test_wfcommons_instance_replays_through_the_workflow_flow(kafka, tmp_path):
    from tests.test_traces import wfcommons_14

    path = tmp_path / "instance.json"
    path.write_text(json.dumps(wfcommons_14()))
    out = run_liquid("produce", "signals", "--from-wfcommons", path, "--runs", "30", "--jitter", "0.2",
                     "--workflow", "wfc", "--bootstrap", kafka.bootstrap).stdout
    produced = int(out.split("produced ")[1].split()[0])
    run_liquid("flow", "run", "workflow", "--until-end", "--bootstrap", kafka.bootstrap)
    signals = [s for s in read_topic(kafka, TOPICS.signals) if s.get("_schema") == "WorkflowSignal"]
    predictions = [p for p in read_topic(kafka, TOPICS.predictions) if p.get("_schema") == "NextStepPrediction"]
    assert len(signals) == produced and {s["workflow_id"] for s in signals} == {"wfc"}
    assert len(predictions) == sum(1 for s in signals if s["state"] == 1)
    bad = run_liquid("produce", "signals", "--from-wfcommons", tmp_path / "nope.json", "--bootstrap",
                     kafka.bootstrap, check=False)
    assert bad.returncode == 2 and "no such WfCommons instance" in bad.stderr


class FakeNvml(types.ModuleType):
    """Stands in for pynvml where no NVIDIA GPU exists (the only place a stand-in is allowed)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self):
        super().__init__("pynvml")
        self.inited = False

    def nvmlInit(self):
        self.inited = True

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=6 * 2**30, total=8 * 2**30)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 83

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetPowerUsage(self, h):
        return 241_500  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 300_000


def test_nvml_sensor_reads_a_gpu_and_auto_falls_back_without_one(monkeypatch):
    from edge.sensors import NvmlSensor, ThermalSensor, open_sensor
    from edge.thermal import Scenario

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sensor = open_sensor("auto", "edge-1", Scenario())
    assert isinstance(sensor, NvmlSensor) and fake.inited and sensor.source == "nvml"
    assert sensor.read(1.0, "cnn", "fp32", 8) == {"gpu_temp_c": 83.0, "gpu_util": 0.97, "mem_used_frac": 0.75,
                                                  "power_w": 241.5, "power_cap_w": 300.0}
    monkeypatch.delitem(sys.modules, "pynvml")

    class NoDriver(types.ModuleType):
        def nvmlInit(self):
            raise OSError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", NoDriver("pynvml"))
    assert isinstance(open_sensor("auto", "edge-1", Scenario()), ThermalSensor)
    with pytest.raises(RuntimeError, match="NVML unavailable"):
        open_sensor("nvml", "edge-1", Scenario())


@pytest.mark.broker
def test_read_back_finds_the_true_end_of_large_batches(kafka):
    """Tansu reports a partition's end as its last batch's base offset + 1: large batches must still be read whole."""
    from confluent_kafka import Producer

    producer = Producer(kafka.producer(**{"linger.ms": "50", "batch.num.messages": "10000"}))
    for i in range(20_000):
        producer.produce("liquid.alerts", key=str(i % 3).encode(), value=b"x" * 20)
    producer.flush()
    from schemas.kafka import partition_ends
    from confluent_kafka import Consumer

    consumer = Consumer(kafka.consumer("t"))
    ends = partition_ends(consumer, "liquid.alerts", 2)
    consumer.close()
    assert sum(end - low for low, end in ends.values()) == 20_000
    assert len(read_topic(kafka, "liquid.alerts")) == 20_000


def test_spawned_processes_get_the_snapshot_interval_as_given(monkeypatch, tmp_path):
    """`-p N` hands each process its cluster place and intervals unrounded (Bytewax's own CLI takes whole seconds)."""
    import deploy.flowrun as flowrun
    from flows.spec import FlowSpec

    started = []

    class Child:
        def __init__(self, argv, env):
            started.append((argv, env))

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(flowrun.subprocess, "Popen", Child)
    code = flowrun.run_flow(FlowSpec("control", "127.0.0.1:1"), workers=1, processes=2, recovery_dir=tmp_path / "r",
                            snapshot_interval_s=0.2, backup_interval_s=1.5)
    members = [json.loads(argv[-1]) for argv, _ in started]
    assert code == 0 and [m["process_id"] for m in members] == [0, 1]
    assert {(m["snapshot_interval_s"], m["backup_interval_s"]) for m in members} == {(0.2, 1.5)}
    assert all(argv[1:3] == ["-m", "deploy.flowrun"] and len(m["addresses"]) == 2 for (argv, _), m in zip(started, members))


@pytest.mark.broker
def test_a_flow_gives_each_client_only_its_own_settings(kafka):
    """Consumer-only and producer-only -X settings reach only their kind of client: no librdkafka CONFWARN."""
    proc = run_liquid("flow", "run", "control", "--until-end", "--bootstrap", kafka.bootstrap,
                      "-X", "linger.ms=3", "-X", "fetch.wait.max.ms=7", "-X", "client.id=liquid-test", timeout=180)
    assert "CONFWARN" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.broker
def test_two_hosts_of_a_cluster_make_the_same_commands_as_one_worker(kafka, tmp_path):
    """-i/-a: two processes on loopback as two hosts of one Bytewax cluster, against one worker's replay."""
    from deploy.broker import free_port
    from deploy.produce import produce_telemetry
    from edge.thermal import Scenario
    from tests.conftest import start_liquid

    produce_telemetry(kafka, TOPICS, [f"edge-{i}" for i in range(6)], Scenario("thermal-event", 150), speed=0,
                      follow_commands=False, start_ms=1_700_000_000_000, seed=11)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    hosts = [start_liquid("flow", "run", "control", "-i", str(i), "-a", addresses, "--until-end",
                          "--bootstrap", kafka.bootstrap, log=tmp_path / f"host{i}.log") for i in range(2)]
    try:
        codes = [h.wait(timeout=180) for h in hosts]
    finally:
        for h in hosts:
            if h.poll() is None:
                h.kill()
    assert codes == [0, 0], [(tmp_path / f"host{i}.log").read_text()[-1500:] for i in range(2)]
    one = one_worker_replay(kafka)
    assert len(one) > 20 and commands_by_id(kafka, TOPICS.commands) == one


@pytest.mark.broker
def test_simulated_nodes_differ_unless_asked_to_be_identical(kafka):
    def temperatures(*extra):
        run_liquid("produce", "telemetry", "--nodes", "3", "--open-loop", "--speed", "0", "--duration", "20",
                   "--quiet", "--topic", topic, "--bootstrap", kafka.bootstrap, *extra)
        by_node: dict[str, list] = {}
        for r in read_topic(kafka, topic):
            by_node.setdefault(r["node_id"], []).append(round(r["gpu_temp_c"], 1))
        return by_node

    from deploy.topics import ensure_topics

    def largest_spread(by_node: dict) -> float:
        """The widest gap between the nodes' temperatures at any one sample."""
        return max(max(at) - min(at) for at in zip(*by_node.values()))

    topic = "fleet.varied"
    ensure_topics(kafka, [topic, "fleet.identical"], partitions=1)
    varied = temperatures()
    topic = "fleet.identical"
    identical = temperatures("--identical")
    assert len(varied) == len(identical) == 3
    # identical nodes differ only by their sensors' noise (sigma 0.2 degC); varied ones by their air, fan and cap
    assert largest_spread(identical) <= 1.5 and largest_spread(varied) >= 3.0


def test_a_demo_given_a_missing_zoo_says_so_in_one_line(tmp_path):
    proc = run_liquid("demo", "--zoo", tmp_path / "no-zoo", "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no model zoo at" in proc.stderr and "liquid zoo build" in proc.stderr


#: librdkafka's lines when a client outlives the broker it talks to.
CLIENT_AFTER_BROKER = ("Connection refused", "Disconnected", "Broker transport failure")


@pytest.mark.broker
def test_the_demo_runs_its_spec_and_stops_every_client_before_the_broker(zoo, tmp_path):
    """A short demo on a resource that lowers the temperature limit: the limit drives the policy, and
    nothing in the demo's process still talks to the broker once it is gone."""
    import yaml

    resource = yaml.safe_load((ROOT / "deploy" / "examples" / "demo.yaml").read_text())
    resource["spec"]["constraints"]["max_gpu_temp_celsius"] = 80
    spec = tmp_path / "cool.yaml"
    spec.write_text(yaml.safe_dump(resource))
    out = tmp_path / "demo"
    # stdout and stderr in one stream, in the order they were written
    proc = subprocess.run(liquid_cmd("demo", "--speed", "10", "--spec", spec, "--out", out, "--zoo", zoo.root,
                                     "--unsigned"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "step down at 80 °C, snn at 85 °C, back up at 73 °C" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    adaptations = summary["nodes"]["edge-1"]["adaptations"]
    critical = [a for a in adaptations if a["trigger"] == "CRITICAL"]
    recovery = [a for a in adaptations if a["trigger"] == "RECOVERY"]
    # the default resource (85 °C) jumps at 90 °C and climbs back at 78 °C; this one 5 °C lower
    assert critical and all(">= 85.0 °C" in a["reason"] for a in critical), adaptations
    assert recovery and all("<= 73.0 °C" in a["reason"] for a in recovery), adaptations
    assert "edge-1 variants:" in proc.stdout  # the summary was printed
    # a client that outlives the broker logs these from its own threads, up to the summary and beyond
    stray = [line for line in proc.stdout.splitlines() if any(s in line for s in CLIENT_AFTER_BROKER)]
    assert not stray, stray


def test_a_producer_for_a_whole_fleet_batches_unless_told_otherwise():
    """The fleet simulator and log replays send for many sources: 20 ms linger by default, a given -X wins."""
    from schemas.kafka import KafkaSettings

    assert KafkaSettings("b:1").gateway_producer()["linger.ms"] == "20"
    assert KafkaSettings("b:1").producer()["linger.ms"] == "2"          # a single source's producer is unchanged
    given = KafkaSettings("b:1", {"linger.ms": "3", "fetch.wait.max.ms": "7"}).gateway_producer()
    assert given["linger.ms"] == "3" and "fetch.wait.max.ms" not in given


@pytest.mark.broker
def test_a_dump_to_the_end_reads_past_a_listed_end_that_lags(kafka):
    """read_topic does not trust the listed end offset (the embedded broker's can lag what it serves)."""
    import io

    from confluent_kafka import Producer

    from deploy.replay import dump

    producer = Producer(kafka.producer())
    for i in range(12):
        producer.produce("liquid.alerts", value=b"x", partition=i % 2)
    producer.flush()
    lagging = {0: (0, 3), 1: (0, 0)}                                # as a lagging broker would list them
    counts = [dump(kafka, "liquid.alerts", lagging, io.StringIO(), to_end=end)["undecodable"] for end in (False, True)]
    assert counts == [3, 12]
    assert len(read_topic(kafka, "liquid.alerts")) == 12


def test_a_dump_reads_in_bulk_unless_told_otherwise():
    """A read through to a topic's end lets the broker gather a megabyte per fetch; a given -X wins."""
    from schemas.kafka import KafkaSettings

    bulk = KafkaSettings("b:1").bulk_consumer("g")
    assert bulk["fetch.min.bytes"] == "1048576" and bulk["group.id"] == "g"
    assert KafkaSettings("b:1").consumer("g")["fetch.min.bytes"] == "1"   # the flows' consumers are unchanged
    given = KafkaSettings("b:1", {"fetch.min.bytes": "5", "linger.ms": "3"}).bulk_consumer("g")
    assert given["fetch.min.bytes"] == "5" and "linger.ms" not in given


@pytest.mark.broker
def test_a_staggered_fleet_samples_each_node_at_its_own_phase(kafka):
    """The scale benchmark's fleet: the same rate, each node at its own instant of each interval."""
    from deploy.produce import produce_telemetry
    from deploy.topics import ensure_topics
    from edge.thermal import Scenario

    topics = TopicNames(telemetry="fleet.staggered")
    ensure_topics(kafka, [topics.telemetry], partitions=1)
    nodes = [f"edge-{i}" for i in range(20)]
    produce_telemetry(kafka, topics, nodes, Scenario("steady", 3), speed=20, follow_commands=False,
                      start_ms=1_700_000_000_000, seed=3, staggered=True)
    offsets: dict[str, list] = {}
    for r in read_topic(kafka, topics.telemetry):
        offsets.setdefault(r["node_id"], []).append(r["ts_ms"] - 1_700_000_000_000)
    assert sorted(offsets) == sorted(nodes) and all(len(ts) == 3 for ts in offsets.values())
    phases = {node: ts[0] for node, ts in offsets.items()}
    # one sample per node per second, each node keeping its phase; the phases spread over the second
    assert all(ts == [phases[n], phases[n] + 1000, phases[n] + 2000] for n, ts in offsets.items())
    assert len(set(phases.values())) >= 15 and max(phases.values()) - min(phases.values()) > 500
    assert all(0 <= p < 1000 for p in phases.values())


@pytest.mark.broker
def test_a_flow_client_reports_its_fetch_and_produce_requests(kafka):
    """librdkafka's statistics as the flows read them: a real producer's and consumer's requests reach the gauge."""
    import time

    from confluent_kafka import Consumer, Producer, TopicPartition

    from prometheus_client import REGISTRY

    from operators.kafka_io import record_client_stats
    from schemas.kafka import KafkaSettings

    def requests(client, kind):
        return REGISTRY.get_sample_value("liquid_kafka_client_requests", {"client": client, "request": kind}) or 0

    settings = KafkaSettings(kafka.bootstrap)
    producer = Producer(settings.producer(**{"statistics.interval.ms": "200",
                                             "stats_cb": lambda s: record_client_stats("test-producer", s)}))
    for i in range(5):
        producer.produce(TOPICS.deadletter, key=b"k", value=b"v%d" % i)
        producer.flush(10)
    consumer = Consumer(settings.consumer("test-stats", **{"statistics.interval.ms": "200",
                                                           "stats_cb": lambda s: record_client_stats("test-consumer", s)}))
    consumer.assign([TopicPartition(TOPICS.deadletter, 0, 0)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and requests("test-consumer", "Fetch") < 3:
        consumer.poll(0.1)
        producer.poll(0)
    consumer.close()
    assert requests("test-producer", "Produce") >= 5  # one flush, one request at least
    assert requests("test-consumer", "Fetch") >= 3


def test_client_statistics_skip_the_bootstrap_connection():
    """Only brokers' connections count (the bootstrap one carries metadata), summed over the brokers."""
    from prometheus_client import REGISTRY

    from operators.kafka_io import record_client_stats

    stats = {"name": "rdkafka#consumer-1", "brokers": {
        "127.0.0.1:9092/bootstrap": {"nodeid": -1, "req": {"Fetch": 0, "Metadata": 4}, "rtt": {"cnt": 0}},
        "127.0.0.1:9092/0": {"nodeid": 0, "req": {"Fetch": 120, "Produce": 0, "Metadata": 2},
                             "rtt": {"cnt": 10, "avg": 2500}},
        "127.0.0.1:9093/1": {"nodeid": 1, "req": {"Fetch": 30, "Produce": 7}, "rtt": {"cnt": 3, "avg": 9000}}}}
    record_client_stats("unit", json.dumps(stats))
    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, {"client": "unit", **labels})

    assert sample("liquid_kafka_client_requests", request="Fetch") == 150
    assert sample("liquid_kafka_client_requests", request="Produce") == 7
    assert sample("liquid_kafka_client_requests", request="Metadata") is None  # only fetches and produces
    assert sample("liquid_kafka_client_rtt_seconds") == pytest.approx(0.009)  # the slowest broker's mean


def test_the_scale_benchmark_times_the_workers_samples_without_changing_them(bench_script, zoo, tmp_path):
    """`bench/scale.py`'s cold/warm figures: each sample the worker takes is timed and handed back as it
    was; the warm measurement takes samples on the worker's node and publishes none of them."""
    from edge.thermal import Scenario
    from edge.worker import EdgeWorker
    from schemas.kafka import KafkaSettings

    scale = bench_script("scale")
    worker = EdgeWorker(KafkaSettings("unused:9092"), TopicNames(), ["edge-1"], Scenario("steady"), zoo_dir=zoo.root,
                        sensor="thermal", outbox_path=tmp_path / "outbox.db")   # built, never started: no broker
    node = worker.nodes["edge-1"]
    took = scale.timed_samples(worker)
    records = [worker.telemetry(node, 1_700_000_000_000 + 1000 * i) for i in range(3)]
    assert len(took) == 3 and all(t > 0 for t in took)
    assert [r["seq"] for r in records] == [1, 2, 3] and records[2]["ts_ms"] == 1_700_000_002_000
    assert records[0]["node_id"] == "edge-1" and "gpu_temp_c" in records[0]
    warm = scale.warm_sample_us(worker, n=20)
    assert warm > 0 and len(took) == 3          # the class's method, not the timed wrapper
    assert node.seq == 23 and worker.outbox.pending() == 0
    worker.outbox.close()


def test_the_scale_benchmarks_worker_overhead_is_everything_but_serving_over_the_workers_cpu(bench_script, zoo):
    """The headline `worker_overhead_fraction` is the issue's measure, by thread: the CPU of every thread
    but the serving ones over the process's (never the difference of two runs, which can print 0 at a
    light load); its parts are the threads that make it, the CPU per second they add up to its cores."""
    scale = bench_script("scale")
    figures = scale.worker_overhead(2.0, 100.0, zoo.root, warm_s=1.0)
    parts = figures["worker_overhead_ms_per_s"]
    assert {"librdkafka", "outbox", "telemetry"} <= set(parts)   # the worker's own threads were seen and split
    assert 0 < figures["worker_overhead_fraction"] < 1
    assert figures["worker_overhead_cores"] == pytest.approx(sum(parts.values()) / 1000, abs=2e-4)
    # fraction = others / (others + serving): serving's CPU per second is what the rest leaves
    serving = figures["worker_overhead_cores"] * (1 / figures["worker_overhead_fraction"] - 1)
    assert serving > figures["worker_overhead_cores"]              # 100 requests/s outweigh the housekeeping
    assert 0 <= figures["worker_overhead_fraction_by_difference"] < 1
