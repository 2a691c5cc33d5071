"""The worker's result cache, switched on by a morph command: hits on repeated inputs, same answers."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge.result_cache import ResultCache
from edge.serving import InferenceServer, RequestLoad


def test_the_cache_is_bounded_and_forgets_the_least_recently_used():
    cache = ResultCache(capacity=3)
    xs = np.linspace(0, 1, 5 * 4, dtype=np.float32).reshape(5, 4)
    cache.store(xs[:3], np.array([0, 1, 2]))
    cache.lookup(xs[:1])                       # xs[0] is now the most recent
    cache.store(xs[3:4], np.array([3]))        # evicts xs[1]
    labels, hit = cache.lookup(xs[:4])
    assert len(cache) == 3 and hit.tolist() == [True, False, True, True] and labels[1] == -1
    _, far = cache.lookup(xs[4:] * 0 + 0.5)    # a different input misses
    assert not far.any()


def test_with_the_cache_on_repeated_inputs_are_served_from_it_with_the_models_answers(zoo):
    from morph.zoo.data import InspectionSplit, load_split

    test = load_split("test")
    inputs = InspectionSplit("test-head", test.x[:360], test.y[:360])  # small enough to come round in 2 s
    with InferenceServer(zoo, "transformer", "fp32") as server:
        load = RequestLoad(server, rate=900, batch_size=8, deadline_ms=2000, inputs=inputs)
        load.set_cache(True)
        with load:
            time.sleep(2.0)      # the 360 inputs come round again: the second pass hits
        with_cache = load.stats()
        plain = RequestLoad(server, rate=900, batch_size=8, deadline_ms=2000, inputs=inputs)
        with plain:
            time.sleep(2.0)
        without = plain.stats()
    assert with_cache.cache_hit_rate > 0.3 and without.cache_hit_rate == 0.0
    assert with_cache.dropped == 0
    # a hit returns what the model said for that input: accuracy is the model's
    assert with_cache.accuracy == pytest.approx(without.accuracy, abs=0.01)


def test_skipping_preprocessing_saves_the_calibration_fetch_and_changes_the_steps_environment():
    from edge.inspection import InspectionCosts, PipelineMode, inspection_lots, inspection_workflow
    from edge.runtime import WorkflowRun
    from tests.support import CentroidClassifier

    mode = PipelineMode()
    spec = inspection_workflow(CentroidClassifier(), costs=InspectionCosts().scaled(0.2), pipeline=mode)
    lot = inspection_lots(1, seed=3)[0]
    full = WorkflowRun(spec, "r1", "edge-7").execute(lot)
    preprocess = next(s for s in spec.steps if s.name == "preprocess")
    env_full = preprocess.environment_id()
    mode.set("skip-preprocess")
    skipped = WorkflowRun(spec, "r2", "edge-7").execute(lot)
    assert full.error is None and skipped.error is None
    assert preprocess.environment_id() != env_full       # a shadow made in the other mode never commits
    took = lambda r: next(x.busy_ms for x in r.records if x.step == "preprocess")   # noqa: E731
    assert took(skipped) < took(full)
