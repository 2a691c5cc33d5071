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
    two = {c["command_id"]: c["to_variant"] for c in read_topic(kafka, TOPICS.commands) if "command_id" in c}
    run_liquid("replay", "--topic", TOPICS.telemetry, "--flow", "control", "--bootstrap", kafka.bootstrap)
    one = {c["command_id"]: c["to_variant"] for c in read_topic(kafka, TOPICS.commands + ".replay")
           if "command_id" in c}
    assert len(one) > 20 and two == one


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
