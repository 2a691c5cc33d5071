"""Experience released under DP as per-window sufficient statistics: one ε per window, every cell released."""

import pickle
import random
import statistics
from collections import deque

import pytest

from morph.peers import (BETWEEN_VARIANCE, ExperienceSharer, GroupArchive, SharingConfig, effective_count,
                         projected_noise_variance)
from morph.privacy import LaplaceMechanism, laplace
from schemas.state import StateVersionError

GOOD, BAD = "cnn/fp32/b8", "transformer/fp32/b8"


def window_of(sharer, decisions):
    """Feed (bucket, arm, reward) decisions; every record released."""
    return [r for i, (bucket, arm, reward) in enumerate(decisions) for r in sharer.record(bucket, arm, reward, i)]


def test_a_window_releases_every_cell_it_saw_and_spends_epsilon_once():
    sharer = ExperienceSharer("edge-1", "g0", SharingConfig(epsilon=1.0, window=10, budget=5.0), random.Random(3))
    decisions = [((0, 1, 0, 0), GOOD, 0.8)] * 7 + [((0, 1, 0, 0), BAD, 0.3)] * 2 + [((1, 1, 0, 0), GOOD, 0.6)]
    out = window_of(sharer, decisions)
    assert sorted((r["arm"], r["temp_level"], r["count"]) for r in out) == [(GOOD, 0, 7), (GOOD, 1, 1), (BAD, 0, 2)]
    assert sharer.budget.spent == pytest.approx(1.0) and sharer.budget.releases == 1
    # the noise on a cell's mean has the scale of one clipped reward's range over count · ε
    assert all(r["noise_scale"] == pytest.approx(1.0 / r["count"]) for r in out)
    assert len({r["experience_id"] for r in out}) == 3 and all(r["ts_ms"] == 9 for r in out)


def test_cells_under_the_count_threshold_are_not_released():
    sharer = ExperienceSharer("edge-1", "g0", SharingConfig(epsilon=1.0, window=10, min_count=3), random.Random(3))
    decisions = [((0, 1, 0, 0), GOOD, 0.8)] * 8 + [((0, 1, 0, 0), BAD, 0.3)] * 2
    assert [(r["arm"], r["count"]) for r in window_of(sharer, decisions)] == [(GOOD, 8)]
    below = ExperienceSharer("edge-2", "g0", SharingConfig(epsilon=1.0, window=2, min_count=3), random.Random(3))
    assert window_of(below, [((0, 1, 0, 0), GOOD, 0.8)] * 2) == [] and below.budget.spent == 0.0


def test_the_released_mean_is_the_clipped_mean_plus_laplace_noise_of_the_stated_scale():
    # ε large enough that the projection into [0, 1] never binds (the clipped mean 0.4 ± 16 b)
    means = []
    for seed in range(4000):
        sharer = ExperienceSharer("e", "g0", SharingConfig(epsilon=10.0, window=4), random.Random(seed))
        [r] = window_of(sharer, [((0, 0, 0, 0), GOOD, v) for v in (0.2, 0.4, 1.7, -0.3)])  # clipped to [0, 1]
        means.append(r["reward"])
        assert r["noise_scale"] == pytest.approx(1.0 / 4 / 10.0)
    clipped_mean = (0.2 + 0.4 + 1.0 + 0.0) / 4
    assert statistics.median(means) == pytest.approx(clipped_mean, abs=0.002)
    # Laplace(b): mean absolute deviation b
    assert statistics.fmean(abs(m - clipped_mean) for m in means) == pytest.approx(0.025, rel=0.05)


def test_a_noised_mean_is_projected_into_the_clipping_range_and_its_error_stays_within_the_bound():
    """Post-processing: the projection costs no privacy, never moves the mean away from the clipped one,
    and bounds the noise's mean square by `projected_noise_variance` (its worst over where the clipped mean
    lies), which `effective_count` takes."""
    clip, eps = (0.3635, 0.8635), 1.0
    for rewards in ([0.8635], [0.6], [0.9, 0.85, 0.2, 0.7]):             # at the top, inside, a mix
        clipped_mean = sum(min(max(v, clip[0]), clip[1]) for v in rewards) / len(rewards)
        projected, raw = [], []
        for seed in range(3000):
            sharer = ExperienceSharer("e", "g0", SharingConfig(epsilon=eps, window=len(rewards), clip=clip),
                                      random.Random(seed))
            [r] = window_of(sharer, [((0, 0, 0, 0), GOOD, v) for v in rewards])
            assert clip[0] <= r["reward"] <= clip[1]
            projected.append((r["reward"] - clipped_mean) ** 2)
            b = r["noise_scale"]
            mech = LaplaceMechanism(eps, *clip)            # the same draw, unprojected
            total, _ = mech.release_sum(clipped_mean * len(rewards), random.Random(seed))
            raw.append((total / len(rewards) - clipped_mean) ** 2)
        assert statistics.fmean(projected) <= statistics.fmean(raw)
        assert statistics.fmean(projected) <= projected_noise_variance(b, 0.5) * 1.05 < min(2 * b * b, 0.5 ** 2 / 2)
        assert statistics.fmean(raw) == pytest.approx(2 * b * b, rel=0.15)


def test_a_single_decisions_record_counts_by_its_projected_error():
    one = {"count": 1, "noise_scale": 0.5, "epsilon": 1.0}                 # width 0.5 · 1 · 1
    assert effective_count(one, 0.01) == pytest.approx(1 / (1 + projected_noise_variance(0.5, 0.5) / 0.01))
    assert effective_count({**one, "epsilon": None}, 0.01) == pytest.approx(1 / (1 + 0.5 / 0.01))
    many = {"count": 17, "noise_scale": 0.5 / 17, "epsilon": 1.0}          # little is clipped: about 2b²
    assert effective_count(many, 0.01) == pytest.approx(17 / (1 + 17 * 2 * (0.5 / 17) ** 2 / 0.01), rel=0.01)


def test_without_dp_every_decision_is_released_as_it_is():
    sharer = ExperienceSharer("edge-1", "g0", SharingConfig(), random.Random(0))
    out = window_of(sharer, [((0, 1, 0, 0), GOOD, 1.3), ((0, 1, 0, 0), BAD, 0.3)])
    assert [(r["reward"], r["count"], r["noise_scale"], r["epsilon"]) for r in out] == [(1.3, 1, 0.0, None),
                                                                                        (0.3, 1, 0.0, None)]


def test_effective_count_falls_with_the_noise_and_grows_with_the_count():
    clean = effective_count({"count": 20, "noise_scale": 0.0}, 0.01)
    assert clean == 20
    mech = LaplaceMechanism(1.0, 0.0, 1.0)
    small, large = (effective_count({"count": n, "noise_scale": mech.scale(n)}, 0.01) for n in (20, 200))
    assert small == pytest.approx(20 / 11) and large == pytest.approx(100.0)


def test_the_archive_holds_the_same_evidence_for_clean_and_noisy_records():
    # plain inverse-variance weights (no between-node variance): a record is worth its count, less the noise
    clean, noisy = GroupArchive(evidence=100.0, between_variance=0.0), GroupArchive(evidence=100.0, between_variance=0.0)
    for i in range(300):
        clean.add({"experience_id": f"c{i}", "count": 1, "noise_scale": 0.0})
        noisy.add({"experience_id": f"n{i}", "count": 100, "noise_scale": 0.01})   # worth 100 / 3 each
    assert len(clean.records()) == 100 and clean.held == pytest.approx(100.0)
    assert len(noisy.records()) == 3 and noisy.held == pytest.approx(100.0)
    assert [r["experience_id"] for r in noisy.records()] == ["n297", "n298", "n299"]
    capped = GroupArchive(evidence=100.0, size=10)
    for i in range(30):
        capped.add({"experience_id": f"c{i}", "count": 1, "noise_scale": 0.0})
    assert len(capped.records()) == 10 and capped.held == pytest.approx(10.0)


def test_a_version_1_sharer_snapshot_migrates_its_pools_and_a_newer_one_is_refused():
    sharer = ExperienceSharer("edge-1", "g0", SharingConfig(epsilon=1.0, window=3), random.Random(0))
    v1 = {**sharer.__dict__, "version": 1, "pools": {((0, 1, 0, 0), GOOD): [0.5, 1.5]}}
    del v1["cells"], v1["pending"]
    old_config = object.__new__(SharingConfig)
    object.__setattr__(old_config, "__dict__", {k: v for k, v in vars(sharer.config).items() if k != "window"}
                       | {"batch": 3})
    v1["config"] = old_config
    restored = ExperienceSharer.__new__(ExperienceSharer)
    restored.__setstate__(v1)
    assert restored.config.window == 3 and restored.pending == 2 and restored.version == 2
    assert restored.cells == {((0, 1, 0, 0), GOOD): [1.5, 2]}     # 1.5 clipped to 1.0
    [r] = restored.record((0, 1, 0, 0), GOOD, 0.5, 7)
    assert r["count"] == 3
    again = pickle.loads(pickle.dumps(restored))
    assert again.cells == {} and again.budget.spent == pytest.approx(1.0)
    with pytest.raises(StateVersionError, match="ExperienceSharer snapshot"):
        ExperienceSharer.__new__(ExperienceSharer).__setstate__({**sharer.__dict__, "version": 3})


def test_a_version_1_archive_migrates_to_an_evidence_bound():
    records = deque([{"experience_id": f"a{i}", "count": 1, "noise_scale": 0.0} for i in range(5)], maxlen=5)
    archive = GroupArchive.__new__(GroupArchive)
    archive.__setstate__({"size": 5, "recent": records, "version": 1})
    assert archive.version == GroupArchive.STATE_VERSION and archive.evidence == 5.0 and archive.held == 5.0
    archive.add({"experience_id": "a5", "count": 1, "noise_scale": 0.0})
    assert [r["experience_id"] for r in archive.records()] == [f"a{i}" for i in range(1, 6)]


def test_the_clipping_range_is_the_rewards_structural_range_and_bounds_every_reward():
    """`reward_bounds`: the top is a perfect epoch on the most accurate model; an epoch that breaks an SLO
    scores at most the bottom; the range (the sensitivity) is the SLO penalty, whatever the rewards seen."""
    from morph.agent import RliConfig
    from morph.arms import ArmSet
    from morph.peers import reward_clip
    from morph.reward import EpochMeasurement, RewardWeights, WorkflowConstraints, reward, reward_bounds

    c, w = WorkflowConstraints(min_accuracy=0.9), RewardWeights.preset("balanced")
    low, high = reward_bounds(c, w, best_accuracy=0.96)
    assert high == pytest.approx(0.3 + 0.2 + 0.3 * 0.6 + 0.2) and high - low == pytest.approx(w.slo_penalty)
    rng = random.Random(5)
    for _ in range(3000):
        offered = rng.uniform(1.0, 500.0)
        m = EpochMeasurement(offered_rps=offered, served_rps=rng.uniform(0.0, offered),
                             latency_ms=rng.uniform(0.5, 400.0),
                             accuracy=rng.uniform(0.5, 0.96), power_w=rng.uniform(20.0, 400.0),
                             max_temp_c=80.0, seconds=10.0)
        r = reward(m, c, w, switched=rng.random() < 0.3)
        assert r <= high
        if m.latency_ms > c.max_latency_ms or m.accuracy < c.min_accuracy:
            assert r <= low
    arms = ArmSet.nominal()
    best = max(arms.profile(a).accuracy for a in arms)
    assert reward_clip(RliConfig(), arms) == reward_bounds(RliConfig().constraints, RliConfig().weights, best)


def test_the_noise_follows_the_clipping_range_and_rewards_are_clipped_to_it():
    clip = (0.3635, 0.8635)
    sharer = ExperienceSharer("e", "g0", SharingConfig(epsilon=1.0, window=4, clip=clip), random.Random(0))
    [r] = window_of(sharer, [((0, 0, 0, 0), GOOD, v) for v in (0.7, 0.7, 0.7, 0.7)])
    assert r["noise_scale"] == pytest.approx(0.5 / 4)     # sensitivity high − low = 0.5, over count · ε
    assert sharer.mechanism.sensitivity == pytest.approx(0.5)
    means = []
    for seed in range(3000):
        s = ExperienceSharer("e", "g0", SharingConfig(epsilon=2.0, window=4, clip=clip), random.Random(seed))
        [r] = window_of(s, [((0, 0, 0, 0), GOOD, v) for v in (-0.2, 0.5, 0.95, 0.7)])
        means.append(r["reward"])
    clipped_mean = (0.3635 + 0.5 + 0.8635 + 0.7) / 4
    assert statistics.median(means) == pytest.approx(clipped_mean, abs=0.01)
    # Laplace(b) with b = 0.5 / 4 / 2: mean absolute deviation b
    assert statistics.fmean(abs(m - clipped_mean) for m in means) == pytest.approx(0.0625, rel=0.06)


def test_a_tighter_range_makes_a_window_worth_more_to_the_receiver():
    """Same count and ε: the sensitivity halves, the noise variance quarters, the inverse-variance weight
    (`effective_count`) grows accordingly; a record is never worth more than its count."""
    wide = LaplaceMechanism(1.0, 0.0, 1.0)
    tight = LaplaceMechanism(1.0, 0.3635, 0.8635)
    for n in (1, 5, 17, 60):
        w_wide, w_tight = (effective_count({"count": n, "noise_scale": m.scale(n)}, 0.01) for m in (wide, tight))
        assert w_tight == pytest.approx(n / (1 + 50 / n)) and w_wide == pytest.approx(n / (1 + 200 / n))
        assert w_wide < w_tight < n


def test_a_version_2_archive_recounts_the_evidence_it_holds():
    """Version 2 counted a single decision's DP record at its unprojected noise; the migration recounts."""
    one = {"experience_id": "x", "count": 1, "noise_scale": 0.5, "epsilon": 1.0}
    clean = {"experience_id": "y", "count": 1, "noise_scale": 0.0}
    old_held = 1.0 + 1 / (1 + 0.5 / 0.01)
    archive = GroupArchive.__new__(GroupArchive)
    archive.__setstate__({"evidence": 10.0, "size": 100, "reward_variance": 0.01, "recent": deque([one, clean]),
                          "held": old_held, "version": 2})
    assert archive.version == GroupArchive.STATE_VERSION
    # the projected noise (0.066 since version 5, not 2b² = 0.5), and since version 4 the between-node variance
    tau2, noise = archive.between_variance, projected_noise_variance(0.5, 0.5)
    assert tau2 == BETWEEN_VARIANCE and archive.held == pytest.approx(1.0 + (0.01 + tau2) / (0.01 + noise + tau2))
    assert archive.held == pytest.approx(effective_count(one, 0.01, tau2) + effective_count(clean, 0.01, tau2))


def test_the_control_flow_shares_under_dp_in_its_agents_reward_range():
    from flows.spec import FlowSpec
    from morph.peers import reward_clip
    from operators.from_spec import agent_for, sharer_factory_for

    spec = FlowSpec("control", bootstrap="unused:9092", deterministic=True, options={"policy_kind": "rli"})
    agent = agent_for(spec)
    sharer = sharer_factory_for(spec, agent)("edge-1")
    assert sharer.config.epsilon == 1.0 and tuple(sharer.config.clip) == reward_clip(agent.config, agent.arms)
    assert sharer.mechanism.sensitivity == pytest.approx(agent.config.weights.slo_penalty)
    assert tuple(sharer_factory_for(spec)("edge-1").config.clip) == (0.0, 1.0)


def test_between_node_variance_caps_what_one_peers_record_is_worth():
    """A peer's cell differs from the receiver's by τ² however many decisions it holds (random effects):
    a clean single decision stays worth one, a window's record at most 1 + v / τ², and τ² = 0 is plain
    inverse-variance weighting to the bit."""
    v, tau2 = 0.01, BETWEEN_VARIANCE
    assert tau2 > 0 and SharingConfig().between_variance == tau2 and GroupArchive().between_variance == tau2
    assert effective_count({"count": 1, "noise_scale": 0.0}, v, tau2) == 1.0
    clean = [effective_count({"count": n, "noise_scale": 0.0}, v, tau2) for n in (1, 2, 20, 10_000)]
    assert clean == sorted(clean) and clean[-1] < 1 + v / tau2 and clean[-1] == pytest.approx(1 + v / tau2, rel=1e-3)
    mech = LaplaceMechanism(1.0, 0.3635, 0.8635)
    window = {"count": 17, "noise_scale": mech.scale(17), "epsilon": 1.0}
    single = {"count": 1, "noise_scale": mech.scale(1), "epsilon": 1.0}
    noise = {n: projected_noise_variance(mech.scale(n), 0.5) for n in (1, 17)}
    assert effective_count(window, v, tau2) == pytest.approx((v + tau2) / (v / 17 + noise[17] + tau2))
    assert effective_count(single, v, tau2) == pytest.approx((v + tau2) / (v + noise[1] + tau2))
    # the cap falls on the well-populated window more than on the single (exploratory) decision
    ratio = effective_count(single, v, tau2) / effective_count(window, v, tau2)
    assert ratio > 5 * effective_count(single, v) / effective_count(window, v)
    assert effective_count(window, v, 0.0) == 17 / (1 + 17 * noise[17] / v)
    assert effective_count(single, v, 0.0) == 1 / (1 + 1 * noise[1] / v)


def test_the_receivers_weighting_leaves_the_release_and_its_privacy_accounting_as_they_were():
    """τ² is the receiver's: the sender's noise scale, noised sums and ε spent do not depend on it."""
    decisions = [((0, 1, 0, 0), GOOD, 0.8)] * 17 + [((0, 1, 0, 0), BAD, 0.3), ((1, 1, 0, 0), BAD, 0.5), ((0, 1, 0, 0), "x", 0.6)]
    out = []
    for tau2 in (0.0, BETWEEN_VARIANCE, 1.0):
        config = SharingConfig(epsilon=1.0, window=20, clip=(0.3635, 0.8635), between_variance=tau2)
        sharer = ExperienceSharer("edge-1", "g0", config, random.Random(5))
        out.append((window_of(sharer, decisions * 2), sharer.budget.spent, sharer.budget.releases))
    assert out[0] == out[1] == out[2]
    records, spent, releases = out[0]
    assert spent == pytest.approx(2.0) and releases == 2
    assert all(r["noise_scale"] == pytest.approx(0.5 / r["count"] / 1.0) for r in records)


def test_with_between_node_variance_the_archive_keeps_more_windows_of_noised_exploration():
    """At the same evidence, capping each window's well-populated cell keeps more windows, and so more of
    the peers' single exploratory decisions, for a node that joins."""
    mech = LaplaceMechanism(1.0, 0.3635, 0.8635)
    windows = [[{"experience_id": f"w{w}-exploit", "count": 18, "noise_scale": mech.scale(18), "epsilon": 1.0}]
               + [{"experience_id": f"w{w}-explore{k}", "count": 1, "noise_scale": mech.scale(1), "epsilon": 1.0}
                  for k in range(2)] for w in range(500)]
    kept = {}
    for tau2 in (0.0, BETWEEN_VARIANCE):
        archive = GroupArchive(evidence=500.0, between_variance=tau2)
        for w in windows:
            for r in w:
                archive.add(r)
        assert archive.held == pytest.approx(500.0, abs=5.0)
        kept[tau2] = sum("explore" in r["experience_id"] for r in archive.records())
    assert kept[BETWEEN_VARIANCE] > 2.5 * kept[0.0]


def test_a_version_3_archive_recounts_its_evidence_with_the_between_node_variance():
    window = {"experience_id": "x", "count": 17, "noise_scale": 0.5 / 17, "epsilon": 1.0}
    archive = GroupArchive.__new__(GroupArchive)
    archive.__setstate__({"evidence": 10.0, "size": 100, "reward_variance": 0.01, "recent": deque([window]),
                          "held": effective_count(window, 0.01), "version": 3})
    assert archive.version == GroupArchive.STATE_VERSION and archive.between_variance == BETWEEN_VARIANCE
    assert archive.held == pytest.approx(effective_count(window, 0.01, BETWEEN_VARIANCE)) and archive.held < 2.0


def test_the_projected_noise_variance_is_the_worst_mean_square_over_where_the_clipped_mean_lies():
    """Laplace noise on a mean known to lie in [low, high], projected there: the mean square error of the
    projected mean, by simulation, at the ends and inside the range, never exceeds `projected_noise_variance`,
    and at its worst place (an end, for a single decision at ε = 1) reaches it; it is about half of the
    width²/2 bound taken before version 5, and 2b² when little is clipped."""
    low, high = 0.3635, 0.8635
    for count in (1, 2, 3, 17):
        mech = LaplaceMechanism(1.0, low, high)
        b, bound = mech.scale(count), projected_noise_variance(mech.scale(count), high - low)
        rng = random.Random(count)
        mse = {}
        for mu in (low, low + 0.1, (low + high) / 2, high):
            errors = [(mech.clip(mu + laplace(rng, b)) - mu) ** 2 for _ in range(40_000)]
            mse[mu] = statistics.fmean(errors)
            assert mse[mu] <= bound * 1.03
        assert max(mse.values()) == pytest.approx(bound, rel=0.04)
        assert bound <= min(2 * b * b, (high - low) ** 2 / 2)
    assert projected_noise_variance(0.5, 0.5) == pytest.approx(0.066, abs=0.001)


def test_a_version_4_archive_recounts_its_single_decisions_by_their_projected_noise():
    one = {"experience_id": "x", "count": 1, "noise_scale": 0.5, "epsilon": 1.0}
    tau2 = BETWEEN_VARIANCE
    old_held = (0.01 + tau2) / (0.01 + 0.125 + tau2)          # version 4's width²/2 bound
    archive = GroupArchive.__new__(GroupArchive)
    archive.__setstate__({"evidence": 10.0, "size": 100, "reward_variance": 0.01, "between_variance": tau2,
                          "recent": deque([one]), "held": old_held, "version": 4})
    assert archive.version == GroupArchive.STATE_VERSION == 5
    assert archive.held == pytest.approx(effective_count(one, 0.01, tau2)) and archive.held > 1.5 * old_held
    archive.add({"experience_id": "y", "count": 1, "noise_scale": 0.0})
    assert archive.held == pytest.approx(effective_count(one, 0.01, tau2) + 1.0)
