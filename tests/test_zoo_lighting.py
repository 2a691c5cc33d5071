"""The night shift as a scenario: a request stream whose light drifts loses accuracy, and normalisation wins it back."""

from __future__ import annotations

import time

import pytest

from edge.serving import InferenceServer, RequestLoad
from morph.zoo import runtime
from morph.zoo.data import DriftingFrames
from morph.zoo.lighting import ShiftChange, normalise_illumination
from morph.zoo.robustness import lighting_robustness


def test_the_build_records_the_night_shift_drop_and_what_normalisation_recovers(zoo):
    rows = zoo.info["lighting_drift"]["models"]
    assert set(rows) == {f"{v}/fp32" for v in ("transformer", "lstm", "cnn", "mobilenet", "snn")}
    for key, row in rows.items():
        assert row["raw"]["1.0"] < row["raw"]["0.0"] - 0.05, (key, row)         # the night costs accuracy
        assert row["normalised"]["1.0"] > row["raw"]["1.0"] + 0.05, (key, row)  # the stage wins some back
    again = lighting_robustness({("cnn", "fp32"): runtime.open_session(zoo.model_path("cnn", "fp32"))})
    assert again["cnn/fp32"] == rows["cnn/fp32"]   # the same frames, the same figures


def _served_accuracy(load: RequestLoad, seconds: float) -> float:
    before = load.stats()
    time.sleep(seconds)
    after = load.stats()
    return (after.correct - before.correct) / max(1, after.served - before.served)


def test_a_request_stream_through_a_shift_change_shows_the_drop_and_the_recovery(zoo):
    night = ShiftChange(day_s=1.0, ramp_s=0.5, night_s=1e9)   # scenario seconds, at 1x
    frames = DriftingFrames(night, frames=200, step=0.5).wait()
    with InferenceServer(zoo, "cnn", "fp32") as server:
        load = RequestLoad(server, rate=400, batch_size=8, lighting=frames, time_scale=1.0).start()
        try:
            day = _served_accuracy(load, 0.8)
            time.sleep(1.0)                                    # into the night
            assert load.stats().recent_accuracy is not None
            dark = _served_accuracy(load, 1.5)
            load.set_preprocessing("illumination-normalisation")
            time.sleep(0.2)
            restored = _served_accuracy(load, 1.5)
        finally:
            stats = load.stop()
    assert dark < day - 0.05, (day, dark)
    assert restored > dark + 0.05, (dark, restored)
    assert stats.dropped == 0
    with pytest.raises(ValueError, match="unknown preprocessing stage"):
        load.set_preprocessing("gamma")


def test_normalisation_is_per_frame_and_keeps_the_shape():
    frames = DriftingFrames(ShiftChange(day_s=0, ramp_s=1), frames=10, step=1.0).wait().at(5.0).x
    out = normalise_illumination(frames)
    assert out.shape == frames.shape and out.dtype == frames.dtype
    assert (normalise_illumination(frames[:1]) == out[:1]).all()
