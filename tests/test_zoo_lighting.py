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


def _feed(policy, state, accuracies, preprocessing=None, temp_c=70.0):
    """One telemetry sample a second from a node (cnn at first) that follows every command at once;
    returns the commands that switched a preprocessing stage, with the second they came."""
    cmds, serving = [], {"variant": "cnn", "precision": "fp32", "batch_size": 16}
    for i, accuracy in enumerate(accuracies):
        sample = {"node_id": "n1", "ts_ms": i * 1000, "gpu_temp_c": temp_c, "mem_used_frac": 0.4, "power_w": 150.0,
                  "power_cap_w": 350.0, **serving, "accuracy": accuracy, "preprocessing": preprocessing}
        cmd = policy.decide(state, sample)
        if cmd is not None:
            serving = {"variant": cmd["to_variant"], "precision": cmd["to_precision"], "batch_size": cmd["batch_size"]}
            if cmd["preprocessing"] is not None or cmd["trigger"] == "CRITICAL":
                cmds.append((i, cmd))
            preprocessing = cmd["preprocessing"] or preprocessing
    return cmds


def test_the_rules_switch_normalisation_on_when_accuracy_stays_under_the_workflows_minimum():
    from morph.policy import LIGHTING_STAGE, MorphPolicy, NodeState, PolicyConfig

    policy = MorphPolicy(PolicyConfig(min_accuracy=0.8))
    # Day (0.92), a noisy dip of two samples (no action), then the night (0.55) for good.
    cmds = _feed(policy, NodeState.new("n1"), [0.92] * 8 + [0.7, 0.7, 0.9] + [0.55] * 10)
    assert len(cmds) == 1, cmds
    second, cmd = cmds[0]
    assert second == 13   # the third night sample in a row
    assert cmd["preprocessing"] == LIGHTING_STAGE
    assert (cmd["to_variant"], cmd["to_precision"]) == (cmd["from_variant"], cmd["from_precision"])  # same model
    assert "accuracy 0.55 < min_accuracy 0.80" in cmd["reason"]
    # Already normalising, or no minimum given, or no labelled requests: nothing to do.
    assert _feed(policy, NodeState.new("n1"), [0.55] * 12, preprocessing=LIGHTING_STAGE) == []
    assert _feed(MorphPolicy(PolicyConfig()), NodeState.new("n1"), [0.55] * 12) == []
    assert _feed(policy, NodeState.new("n1"), [None] * 12) == []


def test_heat_comes_before_light():
    from morph.policy import MorphPolicy, NodeState, PolicyConfig

    cmds = _feed(MorphPolicy(PolicyConfig(min_accuracy=0.8)), NodeState.new("n1"), [0.5] * 8, temp_c=91.0)
    assert cmds[0][1]["trigger"] == "CRITICAL" and cmds[0][1]["preprocessing"] is None


def test_a_version_2_node_state_is_migrated_and_a_newer_one_refused():
    import pickle

    from morph.policy import NodeState
    from schemas.state import StateVersionError

    state = NodeState.new("n1")
    state.decisions = 4
    v2 = {k: v for k, v in vars(state).items() if k not in ("low_accuracy_hits", "rung_rise_c", "step_down_watch")}
    v2["version"] = 2
    restored = NodeState.__new__(NodeState)
    restored.__setstate__(v2)
    assert (restored.version, restored.low_accuracy_hits, restored.decisions) == (4, 0, 4)
    assert pickle.loads(pickle.dumps(restored)) == restored
    with pytest.raises(StateVersionError, match="reads 1 to 4"):
        NodeState.__new__(NodeState).__setstate__({**vars(state), "version": 5})


def test_the_learned_agent_can_be_given_a_normalisation_arm():
    from edge.inspection import PipelineMode
    from morph.arms import LIGHTING, PIPELINES, ArmSet

    arms = ArmSet.nominal(batches=(8,), cache=(False,), pipelines=PIPELINES + (LIGHTING,))
    arm = arms.find("cnn", "fp32", 8, pipeline=LIGHTING)
    assert arm.name == "cnn/fp32/b8/normalise" and arm.preprocessing == LIGHTING
    assert arms.find("cnn", "fp32", 8).preprocessing is None
    mode = PipelineMode()
    mode.set(arm.pipeline)   # what the worker does with the command's pipeline field
    assert mode.normalise and not mode.skip_preprocess
