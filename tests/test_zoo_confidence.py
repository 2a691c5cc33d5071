"""The confidence proxy: a label-free signal of the night shift, in telemetry and the worker's gauges."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from edge.serving import InferenceServer, RequestLoad
from morph.zoo.data import DriftingFrames
from morph.zoo.lighting import ShiftChange


def _served_confidence(load: RequestLoad, seconds: float, reads: int = 5) -> float:
    """The proxy as the worker reads it (the last second's mean), averaged over a few reads (a read
    after a second in which a loaded machine served nothing is None, and skipped)."""
    values = []
    for _ in range(reads):
        time.sleep(seconds / reads)
        values.append(load.stats().recent_confidence)
    served = [v for v in values if v is not None]
    assert served, values
    return sum(served) / len(served)


def test_the_night_shift_lowers_the_confidence_proxy_and_normalisation_raises_it(zoo):
    night = ShiftChange(day_s=1.0, ramp_s=0.5, night_s=1e9)   # scenario seconds, at 1x
    frames = DriftingFrames(night, frames=200, step=0.5).wait()
    with InferenceServer(zoo, "cnn", "fp32") as server:
        load = RequestLoad(server, rate=400, batch_size=8, lighting=frames, time_scale=1.0).start()
        try:
            day = _served_confidence(load, 0.8)
            time.sleep(1.0)                                    # into the night
            dark = _served_confidence(load, 1.5)
            load.set_preprocessing("illumination-normalisation")
            time.sleep(1.1)                                    # the last second: normalised frames only
            restored = _served_confidence(load, 1.5)
        finally:
            load.stop()
    assert dark < day - 0.05, (day, dark)
    assert restored > dark + 0.05, (dark, restored)
    assert 0.0 < dark < day <= 1.0


def test_with_the_result_cache_on_the_models_own_answers_still_count_and_none_served_is_none(zoo):
    with InferenceServer(zoo, "cnn", "fp32") as server:
        load = RequestLoad(server, rate=200, batch_size=4)
        assert load.stats().recent_confidence is None     # nothing served yet
        load.set_cache(True)
        load.start()
        try:
            time.sleep(1.5)
        finally:
            stats = load.stop()
    # the first pass over the split misses the cache: those batches are the model's answers, counted
    assert stats.served > 0 and stats.recent_confidence is not None


def test_the_worker_reports_it_in_telemetry_and_as_a_prometheus_gauge(zoo):
    from edge.metrics import WorkerCollector
    from edge.sensors import ThermalSensor
    from edge.thermal import Scenario
    from edge.worker import EdgeNode, EdgeWorker
    from schemas.codec import Codec

    with InferenceServer(zoo, "cnn", "fp32") as server:
        load = RequestLoad(server, rate=200, batch_size=4).start()
        node = EdgeNode("edge-7", server, load, ThermalSensor.for_node("edge-7", Scenario("steady")))
        try:
            time.sleep(1.2)
            worker = SimpleNamespace(interval_s=1.0, time_scale=1.0, boot="b0", nodes={"edge-7": node}, last_telemetry={})
            record = EdgeWorker.telemetry(worker, node, int(time.time() * 1000))
            worker.last_telemetry["edge-7"] = record
            families = {f.name: f for f in WorkerCollector(worker).collect()}
        finally:
            load.stop()
    assert 0.0 < record["confidence"] <= 1.0
    codec = Codec()
    assert codec.decode(codec.encode("Telemetry", record)).record["confidence"] == record["confidence"]
    gauge = families["liquid_node_confidence"].samples
    assert [(s.labels, s.value) for s in gauge] == [({"node": "edge-7"}, record["confidence"])]
    assert families["liquid_node_accuracy"].samples[0].value == record["accuracy"]


def test_the_confidence_field_is_a_backward_compatible_addition():
    """Readers of the new schema read records written without it (confidence None), readers of the
    old one skip it, and the registry accepts the new schema over the old."""
    import io

    import fastavro

    from schemas import schema_json
    from tests.registry_server import Registry

    new = schema_json("Telemetry")
    old = {**new, "fields": [f for f in new["fields"] if f["name"] != "confidence"]}
    assert len(old["fields"]) == len(new["fields"]) - 1
    registry = Registry()
    registry.subjects["edge.telemetry-value"] = [registry.id_of(json.dumps(old))]
    assert registry.compatible("edge.telemetry-value", json.dumps(new))

    record = {"node_id": "edge-1", "ts_ms": 1, "seq": 1, "gpu_temp_c": 70.0, "gpu_util": 1.0, "mem_used_frac": 0.4,
              "power_w": 150.0, "power_cap_w": 350.0, "latency_ms": 2.0, "throughput_rps": 100.0,
              "variant": "cnn", "precision": "fp32", "batch_size": 16, "source": "thermal-model"}
    old_parsed, new_parsed = fastavro.parse_schema(old), fastavro.parse_schema(new)

    def roundtrip(writer, reader, rec):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, writer, rec)
        buf.seek(0)
        return fastavro.schemaless_reader(buf, writer, reader)

    assert roundtrip(old_parsed, new_parsed, record)["confidence"] is None
    assert "confidence" not in roundtrip(new_parsed, old_parsed, {**record, "confidence": 0.9})
    assert roundtrip(new_parsed, new_parsed, {**record, "confidence": 0.9})["confidence"] == 0.9


def _feed(policy, state, readings):
    """(accuracy, confidence) a second from a cnn node that follows every command; the lighting commands."""
    from morph.policy import LIGHTING_STAGE

    out, preprocessing = [], None
    for i, (accuracy, confidence) in enumerate(readings):
        # 80 °C: inside the hysteresis band, so no thermal rule acts
        sample = {"node_id": "n1", "ts_ms": i * 1000, "gpu_temp_c": 80.0, "mem_used_frac": 0.4, "power_w": 150.0,
                  "power_cap_w": 350.0, "variant": "cnn", "precision": "fp32", "batch_size": 16,
                  "accuracy": accuracy, "confidence": confidence, "preprocessing": preprocessing}
        cmd = policy.decide(state, sample)
        if cmd is not None and cmd["preprocessing"] == LIGHTING_STAGE:
            out.append((i, cmd))
            preprocessing = LIGHTING_STAGE
    return out


def test_without_labelled_requests_the_lighting_rule_reads_the_confidence_proxy():
    from morph.policy import MorphPolicy, NodeState, PolicyConfig

    config = PolicyConfig(min_accuracy=0.8, min_confidence=0.9, tiers=((0.0, "fp32", 16),))
    unlabelled = [(None, 0.96)] * 8 + [(None, 0.86)] * 6
    cmds = _feed(MorphPolicy(config), NodeState.new("n1"), unlabelled)
    assert [i for i, _ in cmds] == [10]          # the third low sample in a row
    assert "no labelled requests; confidence 0.86 < min_confidence 0.90" in cmds[0][1]["reason"]
    # labelled requests decide when there are some: high accuracy outweighs a low confidence
    assert _feed(MorphPolicy(config), NodeState.new("n1"), [(0.92, 0.86)] * 14) == []
    # no confidence floor set: the rule waits for labels, as before
    no_floor = PolicyConfig(min_accuracy=0.8, tiers=((0.0, "fp32", 16),))
    assert _feed(MorphPolicy(no_floor), NodeState.new("n1"), unlabelled) == []


@pytest.mark.parametrize("field", ["accuracy", "confidence"])
def test_the_lighting_rule_still_needs_the_workflows_minimum_accuracy(field):
    from morph.policy import MorphPolicy, NodeState, PolicyConfig

    config = PolicyConfig(min_confidence=0.9, tiers=((0.0, "fp32", 16),))
    readings = [(0.5, None)] * 10 if field == "accuracy" else [(None, 0.5)] * 10
    assert _feed(MorphPolicy(config), NodeState.new("n1"), readings) == []
