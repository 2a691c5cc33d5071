"""The edge worker's serving core: hot swaps under load, verification, accounting."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from edge.serving import APPLIED, FAILED, REJECTED, InferenceServer, Predictions, RequestLoad
from morph.zoo import load_manifest, load_split, runtime
from morph.zoo.manifest import sha256_file


@pytest.fixture
def server(zoo):
    with InferenceServer(zoo, "transformer", "fp32") as s:
        yield s


def test_swapping_under_steady_load_drops_no_request(server, zoo):
    plan = [("lstm", "fp32"), ("cnn", "fp16"), ("snn", "int8"), ("mobilenet", "fp32"),
            ("transformer", "int8"), ("snn", "fp16")]
    load = RequestLoad(server, rate=300, batch_size=4, deadline_ms=1000, keep_log=True).start()
    time.sleep(0.3)
    windows = []  # (variant, precision, applied at, next swap issued at)
    for variant, precision in plan:
        result = server.swap_async(variant, precision).result(timeout=30)
        applied_at = time.monotonic()
        assert result.status == APPLIED, result
        time.sleep(0.25)
        windows.append((variant, precision, applied_at, time.monotonic()))
    stats = load.stop()

    assert stats.dropped == 0 and stats.late == 0 and stats.errors == 0
    assert stats.in_flight == 0 and stats.served == stats.submitted > 500
    records = load.records()
    assert [r.request_id for r in records] == list(range(stats.submitted))  # each request ends exactly once
    assert all(r.served for r in records)
    # Requests kept flowing: every model in the plan served, none served outside its window.
    assert set(stats.per_model) == {("transformer", "fp32"), *plan}
    assert sum(c.served for c in stats.per_model.values()) == stats.served
    for variant, precision, start, end in windows:
        inside = [r for r in records if r.arrived >= start and r.done <= end]
        assert inside and all((r.variant, r.precision) == (variant, precision) for r in inside)
    assert stats.correct == sum(r.label == r.predicted for r in records)
    # Requests come from the zoo's test split: served through swaps, the models score what the zoo measured.
    expected = sum(c.served * zoo.entry(*key).accuracy for key, c in stats.per_model.items()) / stats.served
    assert abs(stats.accuracy - expected) < 0.06, (stats.accuracy, expected)


def test_predictions_after_a_swap_come_from_the_new_model(server, zoo):
    x = load_split("test").x[:64]
    before = server.infer(x)
    assert isinstance(before, Predictions) and before.variant == "transformer"
    result = server.swap("snn", "int8")
    assert result.status == APPLIED and (result.from_variant, result.to_variant) == ("transformer", "snn")
    after = server.infer(x)
    direct = runtime.open_session(zoo.model_path("snn", "int8")).run(None, {"input": x})[0]
    assert (after.variant, after.precision, after.sha256) == ("snn", "int8", zoo.entry("snn", "int8").sha256)
    np.testing.assert_array_equal(after.logits, direct)
    np.testing.assert_array_equal(after.labels, direct.argmax(axis=1))
    assert not np.allclose(after.logits, before.logits)  # the check above can tell the models apart


@pytest.mark.parametrize("variant, precision, sha, why", [
    ("gpt", "fp32", None, "unknown variant"),
    ("cnn", "int4", None, "unknown precision"),
    ("cnn", "fp32", "0" * 64, "checksum mismatch"),
])
def test_bad_swap_is_rejected_and_the_old_model_keeps_serving(server, variant, precision, sha, why):
    old = server.current
    result = server.swap(variant, precision, expected_sha256=sha)
    assert result.status == REJECTED and why in result.reason
    assert (result.from_variant, result.to_variant) == ("transformer", variant)
    assert server.current is old
    assert server.infer(load_split("test").x[:4]).variant == "transformer"


def _zoo_copy(zoo, tmp_path):
    copy = tmp_path / "zoo"
    shutil.copytree(zoo.root, copy, ignore=shutil.ignore_patterns(".build.lock"))
    return copy


def test_a_model_file_changed_on_disk_is_rejected(zoo, tmp_path):
    copy = _zoo_copy(zoo, tmp_path)
    path = copy / zoo.entry("lstm", "fp16").path
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with InferenceServer(load_manifest(copy), "cnn", "fp32") as server:
        result = server.swap("lstm", "fp16", expected_sha256=zoo.entry("lstm", "fp16").sha256)
        assert result.status == REJECTED and "checksum mismatch" in result.reason and "manifest" in result.reason
        assert server.current.variant == "cnn"


def test_a_model_that_fails_to_load_leaves_the_old_one_serving(zoo, tmp_path):
    copy = _zoo_copy(zoo, tmp_path)
    broken = copy / zoo.entry("mobilenet", "fp32").path
    broken.write_bytes(b"not an onnx model")
    manifest = load_manifest(copy)
    entry = manifest.entry("mobilenet", "fp32")
    manifest.entries[entry.key] = replace(entry, sha256=sha256_file(broken))  # passes verification
    manifest.save()
    with InferenceServer(load_manifest(copy), "cnn", "fp32") as server:
        with RequestLoad(server, rate=200, batch_size=4, deadline_ms=1000) as load:
            time.sleep(0.2)
            result = server.swap_async("mobilenet", "fp32").result(timeout=30)
            time.sleep(0.2)
        stats = load.stats()
        assert result.status == FAILED and result.reason
        assert server.current.variant == "cnn"
        assert stats.dropped == 0 and stats.served == stats.submitted > 0
        assert set(stats.per_model) == {("cnn", "fp32")}


def test_queued_swaps_apply_in_order_and_the_last_one_stays(server):
    plan = [("lstm", "int8"), ("cnn", "fp32"), ("gpt", "fp32"), ("mobilenet", "fp16"), ("snn", "fp32")]
    acks = []
    futures = [server.swap_async(v, p, callback=acks.append) for v, p in plan]
    results = [f.result(timeout=30) for f in futures]
    assert [r.status for r in results] == [APPLIED, APPLIED, REJECTED, APPLIED, APPLIED]
    applied = [r for r in results if r.applied]
    for prev, nxt in zip(applied, applied[1:]):
        assert (nxt.from_variant, nxt.from_precision) == (prev.to_variant, prev.to_precision)
    assert (server.current.variant, server.current.precision) == ("snn", "fp32")
    deadline = time.monotonic() + 5
    while len(acks) < len(plan) and time.monotonic() < deadline:  # callbacks run just after the futures resolve
        time.sleep(0.01)
    assert acks == results
    assert server.swap_history()[-len(plan):] == results


def test_swap_to_the_model_already_serving_is_a_no_op(server):
    old = server.current
    result = server.swap("transformer", "fp32", expected_sha256=old.sha256)
    assert result.status == APPLIED and result.reason == "already serving"
    assert server.current is old


def test_load_counts_throughput_per_second(server):
    with RequestLoad(server, rate=200, batch_size=4, deadline_ms=1000) as load:
        time.sleep(2.3)
    stats = load.stats()
    history = load.history()
    assert [h.second for h in history] == [0, 1]
    assert all(h.variant == "transformer" and h.dropped == 0 for h in history)
    # 200/s in batches of 4 on a fixed schedule; a scheduling stall on a busy
    # machine moves requests from one second to the next, hence the margins.
    assert all(100 <= h.served <= 300 for h in history), history
    assert 300 <= sum(h.served for h in history) <= 420
    assert 100 <= stats.throughput_rps <= 300 and 0 < stats.mean_latency_ms < 1000
    assert stats.submitted == stats.served
    assert 440 <= stats.served <= 480


class _FlakyServer:
    """Stands in for an InferenceServer whose model raises on every other call and is slow on the rest."""

    def __init__(self, delay_s: float):
        self.calls, self.delay_s = 0, delay_s
        self.current = type("M", (), {"variant": "cnn", "precision": "fp32"})()
        self.lock = threading.Lock()

    def infer(self, batch):
        with self.lock:
            self.calls += 1
            n = self.calls
        if n % 2:
            raise RuntimeError("model crashed")
        time.sleep(self.delay_s)
        labels = np.zeros(len(batch), dtype=np.int64)
        return Predictions(labels, np.zeros((len(batch), 10), np.float32), "cnn", "fp32", "x")


def test_errors_and_late_requests_are_dropped_and_counted():
    server = _FlakyServer(delay_s=0.03)
    with RequestLoad(server, rate=100, batch_size=2, deadline_ms=10) as load:
        time.sleep(0.5)
    stats = load.stats()
    assert stats.errors > 0 and stats.late > 0 and stats.served == 0
    assert stats.submitted == stats.dropped == stats.errors + stats.late
    assert stats.errors == 2 * ((server.calls + 1) // 2) and stats.late == 2 * (server.calls // 2)


def test_batch_size_changes_on_the_fly_and_the_rate_stays(zoo):
    """A morph command's batch size: larger calls, same request rate, nothing dropped."""
    from collections import Counter

    server = InferenceServer(zoo)
    load = RequestLoad(server, rate=400, batch_size=2, deadline_ms=1000, keep_log=True).start()
    time.sleep(1.0)
    load.set_batch_size(16)
    switched = time.monotonic()
    time.sleep(1.5)
    stats = load.stop()
    server.close()
    records = load.records()
    sizes_before = Counter(r.arrived for r in records if r.arrived < switched - 0.1)
    sizes_after = Counter(r.arrived for r in records if r.arrived > switched + 0.1)
    assert set(sizes_before.values()) == {2}
    assert set(sizes_after.values()) == {16}
    assert stats.dropped == 0
    assert abs(stats.submitted / stats.elapsed_s - 400) < 40  # the offered rate did not change
    with pytest.raises(ValueError):
        load.set_batch_size(0)
