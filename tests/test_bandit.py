"""The discounted LinUCB bandit: finds the best arm, re-finds it after a change, merges like pooled data."""

import pickle
import random

import numpy as np
import pytest

from morph.bandit import DiscountedLinUCB, LinearStats
from schemas.state import StateVersionError

ARMS = np.eye(5)


def run(bandit, means, steps, rng, noise=0.1):
    picks = []
    for _ in range(steps):
        bandit.tick()
        a = int(np.argmax(bandit.ucb(ARMS)))
        bandit.learn_one(ARMS[a], means[a] + rng.gauss(0, noise))
        picks.append(a)
    return picks


def test_finds_the_best_arm_on_a_stationary_problem():
    rng = random.Random(1)
    bandit = DiscountedLinUCB(dim=5, gamma=1.0, alpha=1.0, ridge=1.0)
    picks = run(bandit, [0.2, 0.5, 0.8, 0.4, 0.3], 400, rng)
    assert picks[-100:].count(2) >= 95
    # every arm was tried: the bonus made it explore
    assert set(picks) == set(range(5))


def test_refinds_the_best_arm_after_a_change_point_within_a_bounded_number_of_decisions():
    rng = random.Random(2)
    bandit = DiscountedLinUCB(dim=5, gamma=0.99, alpha=0.5, ridge=0.1)
    run(bandit, [0.2, 0.5, 0.8, 0.4, 0.3], 300, rng)
    after = run(bandit, [0.8, 0.5, 0.2, 0.4, 0.3], 300, rng)   # arm 0 is best now
    first = next(i for i in range(len(after)) if after[i:i + 20].count(0) >= 18)
    assert first <= 60, f"took {first} decisions to settle on the new best arm"
    assert after[-100:].count(0) >= 85


def test_a_stationary_bandit_without_discount_is_slower_to_follow_the_change():
    """The discount is what makes it track: the same run with gamma = 1 stays longer on the old arm."""
    def settle(gamma):
        rng = random.Random(2)
        b = DiscountedLinUCB(dim=5, gamma=gamma, alpha=0.5, ridge=0.1)
        run(b, [0.2, 0.5, 0.8, 0.4, 0.3], 300, rng)
        after = run(b, [0.8, 0.5, 0.2, 0.4, 0.3], 300, rng)
        return after[:150].count(0)

    assert settle(0.99) > settle(1.0) + 30


@pytest.mark.parametrize("gamma", [1.0, 0.95])
def test_merged_statistics_equal_the_pooled_statistics(gamma):
    rng = np.random.default_rng(3)
    a, b, pooled = (DiscountedLinUCB(dim=4, gamma=gamma) for _ in range(3))
    for _ in range(50):
        for learner in (a, b, pooled):
            learner.tick()
        xa, xb = rng.normal(size=4), rng.normal(size=4)
        ra, rb = float(rng.normal()), float(rng.normal())
        a.learn_one(xa, ra)
        b.learn_one(xb, rb)
        pooled.learn_one(xa, ra)
        pooled.learn_one(xb, rb)
    merged = a.stats.merge(b.stats)
    np.testing.assert_allclose(merged.gram, pooled.stats.gram)
    np.testing.assert_allclose(merged.moment, pooled.stats.moment)
    assert merged.count == pytest.approx(pooled.stats.count)
    a.absorb(b.stats)
    probe = rng.normal(size=(3, 4))
    np.testing.assert_allclose(a.ucb(probe), pooled.ucb(probe))


def test_statistics_serialise_and_snapshot():
    b = DiscountedLinUCB(dim=3)
    b.learn_one(np.array([1.0, 0.5, 0.0]), 0.7)
    b.predict(np.eye(3))                    # fills the solve cache, which must not be pickled
    restored = pickle.loads(pickle.dumps(b))
    assert restored._cache is None
    np.testing.assert_allclose(restored.predict(np.eye(3)), b.predict(np.eye(3)))
    again = LinearStats.from_dict(b.stats.to_dict())
    np.testing.assert_allclose(again.gram, b.stats.gram)


def test_a_snapshot_of_a_newer_state_version_is_refused():
    data = {**LinearStats.zeros(2).to_dict(), "version": 9}
    with pytest.raises(StateVersionError, match="state version 9"):
        LinearStats.from_dict(data)
    b = DiscountedLinUCB(dim=2)
    state = {**b.__dict__, "version": 7}
    with pytest.raises(StateVersionError):
        DiscountedLinUCB.__new__(DiscountedLinUCB).__setstate__(state)


def test_the_cholesky_solution_equals_the_ridge_formula_with_an_explicit_inverse():
    rng = np.random.default_rng(7)
    bandit = DiscountedLinUCB(dim=39, gamma=0.995, ridge=1.0, alpha=0.3)
    for _ in range(300):
        bandit.tick()
        bandit.learn_one(rng.normal(size=39), float(rng.normal()))
    phi = rng.normal(size=(61, 39))
    inv = np.linalg.inv(bandit.stats.gram + np.eye(39))
    theta = inv @ bandit.stats.moment
    np.testing.assert_allclose(bandit.predict(phi), phi @ theta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bandit.width(phi), np.sqrt(((phi @ inv) * phi).sum(axis=1)), rtol=1e-9)
    np.testing.assert_allclose(bandit.ucb(phi[0]), phi[0] @ theta + 0.3 * np.sqrt(phi[0] @ inv @ phi[0]),
                               rtol=1e-9)


def test_the_bounds_of_all_arms_from_one_solve_equal_the_mean_plus_the_width_also_after_a_restore():
    rng = np.random.default_rng(11)
    bandit = DiscountedLinUCB(dim=39, gamma=0.995, ridge=1.0, alpha=0.3)
    phi = rng.normal(size=(61, 39))
    for _ in range(200):
        bandit.tick()
        a = int(np.argmax(bandit.ucb(phi)))
        bandit.learn_one(phi[a], float(rng.normal(loc=0.1 * a % 1.0)))
    expected = bandit.predict(phi) + 0.3 * bandit.width(phi)
    np.testing.assert_allclose(bandit.ucb(phi), expected, rtol=1e-9, atol=1e-12)
    restored = pickle.loads(pickle.dumps(bandit))   # the factor is derived: recomputed after a restore
    np.testing.assert_allclose(restored.ucb(phi), expected, rtol=1e-9, atol=1e-12)
    bandit.learn_one(phi[0], 5.0)                    # new evidence invalidates the cached factor
    assert bandit.ucb(phi)[0] > expected[0]


def test_the_bounds_of_rows_given_as_coordinates_on_a_basis_equal_the_bounds_of_the_rows():
    rng = np.random.default_rng(5)
    bandit = DiscountedLinUCB(dim=39, gamma=0.995, ridge=1.0, alpha=0.3)
    coords, basis = rng.normal(size=(61, 9)), rng.normal(size=(39, 9))
    phi = coords @ basis.T
    for _ in range(200):
        bandit.tick()
        a = int(np.argmax(bandit.ucb_factored(coords, basis)))
        bandit.learn_one(phi[a], float(rng.normal(loc=0.1 * a % 1.0)))
    np.testing.assert_allclose(bandit.ucb_factored(coords, basis), bandit.ucb(phi), rtol=1e-9, atol=1e-12)
    assert int(np.argmax(bandit.ucb_factored(coords, basis))) == int(np.argmax(bandit.ucb(phi)))
    rows = rng.random(61) < 0.6                      # only some rows: theirs as above, the others −∞
    some = bandit.ucb_factored(coords, basis, rows)
    np.testing.assert_array_equal(some[rows], bandit.ucb_factored(coords, basis)[rows])
    assert np.all(some[~rows] == -np.inf)


def test_learning_and_ageing_are_numpys_in_place_sums_bit_for_bit():
    """The compiled updates (`morph.bandit._add_outer`, `_scale`) do element for element what NumPy's
    in-place sums do: statistics learnt either way are the same to the last bit."""
    rng = np.random.default_rng(13)
    bandit = DiscountedLinUCB(dim=39, gamma=0.995)
    gram, moment = np.zeros((39, 39)), np.zeros(39)
    for i in range(200):
        bandit.tick()
        gram *= 0.995
        moment *= 0.995
        phi, r = rng.normal(size=39), float(rng.normal())
        w = 1.0 if i % 3 else float(rng.uniform(0.1, 2.0))
        bandit.learn_one(phi, r, w)
        gram += (w * phi)[:, None] * phi
        moment += (w * r) * phi
    assert np.array_equal(bandit.stats.gram, gram) and np.array_equal(bandit.stats.moment, moment)


def test_corrupt_statistics_are_an_error_not_a_silent_answer():
    bandit = DiscountedLinUCB(dim=2, ridge=1.0)
    bandit.stats.gram[:] = -5.0 * np.eye(2)     # no Gram matrix is negative definite
    with pytest.raises(np.linalg.LinAlgError):
        bandit.predict(np.eye(2))


def test_the_control_flow_runs_blas_on_one_thread():
    from threadpoolctl import threadpool_info

    from operators.control import single_threaded_blas

    single_threaded_blas()
    blas = [info for info in threadpool_info() if info["user_api"] == "blas"]
    assert blas and all(info["num_threads"] == 1 for info in blas)
