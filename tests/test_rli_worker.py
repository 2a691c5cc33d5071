"""The worker measures what the learned agent's reward needs: offered load, queue, capacity, energy."""

from __future__ import annotations

import time

import pytest

from edge.serving import InferenceServer, LoadStats, RequestLoad
from edge.worker import load_figures
from schemas.codec import Codec


def test_under_an_offered_load_above_capacity_the_queue_grows_and_capacity_is_what_it_serves(zoo):
    with InferenceServer(zoo, "transformer", "fp32") as server:
        light = RequestLoad(server, rate=50, batch_size=4, deadline_ms=5000)
        with light:
            time.sleep(1.5)
            calm = light.stats()
        capacity = calm.capacity_rps
        assert calm.offered_rps == 50 and capacity is not None and capacity > 50
        heavy = RequestLoad(server, rate=10 * capacity, batch_size=4, deadline_ms=60_000)
        with heavy:
            time.sleep(1.0)
            early = heavy.stats()
            time.sleep(1.0)
            late = heavy.stats()
    assert calm.queue_len <= 4
    assert late.queue_len > early.queue_len > 0             # arrivals outrun serving: the backlog grows
    assert late.throughput_rps < late.offered_rps            # it serves less than is offered ...
    # ... and, busy all the time, what it serves per second is what it can serve per second of serving
    assert late.throughput_rps == pytest.approx(late.capacity_rps, rel=0.5)


def test_energy_per_inference_is_power_over_throughput_and_the_fields_fit_the_schema():
    stats = LoadStats(submitted=10, served=10, dropped=0, late=0, errors=0, in_flight=0, correct=9, per_model={},
                      throughput_rps=200.0, mean_latency_ms=12.0, max_latency_ms=20.0, elapsed_s=1.0,
                      offered_rps=250.0, queue_len=30, capacity_rps=210.0)
    figures = load_figures(stats, power_w=150.0)
    assert figures == {"offered_rps": 250.0, "queue_len": 30, "capacity_rps": 210.0, "energy_j_per_inference": 0.75}
    idle = load_figures(LoadStats(**{**stats.__dict__, "throughput_rps": 0.0}), power_w=40.0)
    assert idle["energy_j_per_inference"] is None
    record = {"node_id": "edge-1", "ts_ms": 1, "seq": 1, "gpu_temp_c": 70.0, "gpu_util": 0.5, "mem_used_frac": 0.4,
              "power_w": 150.0, "power_cap_w": 350.0, "latency_ms": 12.0, "throughput_rps": 200.0,
              "variant": "cnn", "precision": "fp32", "batch_size": 8, "source": "thermal-model", **figures}
    codec = Codec()
    assert codec.decode(codec.encode("Telemetry", record)).record["energy_j_per_inference"] == 0.75
    old = {k: v for k, v in record.items() if k not in figures}          # an older node's telemetry still decodes
    decoded = codec.decode(codec.encode("Telemetry", old)).record
    assert decoded["offered_rps"] is None and decoded["queue_len"] is None
