"""Learned adaptation (RLI) against the rules, on the same heterogeneous simulated fleet.

Every policy runs the same scenarios (`edge.heterogeneous`: node traits, events
and sensor noise from ``--seed``) for ``--hours`` of simulated time, one sample
per node per second, and is scored with the same reward (`morph.reward`,
balanced weights) over the same 10 s epochs:

* static: the transformer (fp32, batch 8) always;
* rules: `MorphPolicy` as deployed (thresholds, hysteresis, resource-score tiers);
* rli: the contextual-bandit agent, each node alone;
* rli+peers: nodes share experience in groups (TTL 3 hops), no privacy noise;
* rli+peers+dp: the same under differential privacy: every ``--dp-window`` decisions a node releases
  each (bucket, arm) cell's reward sum (clipped to the workflow's reward range, `morph.peers.reward_clip`:
  sensitivity 0.5, Laplace-noised) and count, at ``--epsilon`` per window;
* oracle: knows the simulator's state and picks, every epoch, the arm whose next
  epoch earns the most (myopic, like the bandit's objective); regret is measured
  against it.

Peer learning (the seed's Figure 3) is measured on a cold start, because on a fleet
that starts at once the first arm already earns ~0.87 of the oracle's reward and
every learner "reaches 90 %" in its first decisions. On a second fleet
(``--cold-nodes``, same seed) a random half starts the run and the other half
joins one node at a time, evenly spaced from a quarter of the run to
``--horizon`` decisions before its end; rli alone, rli+peers (a newcomer is sent
its group's archive of released experience when it joins), rli+peers+dp and the
oracle run it. ``--cohorts`` such fleets (default 6: the run's own and five
independent ones, same size and protocol) are run and their newcomers pooled:
the figures below are threshold crossings of a mean curve, and one fleet's 16
newcomers left them mostly noise (a bootstrap over seed 3's newcomers put
dp_gain_retained anywhere in [0.0, 0.62]; over 48 newcomers of seed 4, in
[0.23, 1.0]); 96 newcomers cut the standard error of the mean curve by √6.
The per-cohort speedups are reported beside the pooled ones, so the spread
shows. Per newcomer, from its own first decision, mean over newcomers,
moving mean over ``--window`` decisions: decisions to 90 % / 95 % of the
oracle's reward, and to close 50 % / 70 % of the gap between a uniformly random
allowed arm and the oracle; not reached within the horizon counts as horizon + 1.
peer_speedup = decisions alone / with peers (at 90 %; the other levels beside
it); dp_gain_retained = (DP speedup − 1) / (speedup − 1). Also the newcomers'
regret over their first 10, 30 and ``--horizon`` decisions.

Also measured: off-policy evaluation — the rli run's logged decisions estimate
the value of a frozen greedy policy trained on a different fleet (``--seed``
+ 1000), compared with that policy's true value on the same states (the
simulator previews its arm) — and the per-sample decision rate of the agent
through the control flow against the rules (one Bytewax worker, a testing
source and sink: the flow's own cost, without Kafka; seven pairs of runs after
a warm-up pair, each segment of 1,000 events at its fastest, by wall clock and
per CPU second of the process). That flow hears no
peers; what hearing them costs is measured on the morph step alone: CPU per
telemetry sample with the rules, with the agent, and with the agent while each
node also absorbs its 50-node group's releases (DP ε = 1) in time order.

    python bench/rli.py [--seed N] [--nodes N] [--hours H] [--zoo DIR] [--out DIR] [--no-flow | --flow-only]

Progress goes to stderr; the last line of stdout is one JSON object. The zoo
manifest supplies each model's accuracy and cost (``--zoo``, default the
project's zoo); without a built zoo the thermal model's nominal figures are used.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from _bench import ROOT, emit_result

from edge.heterogeneous import HeteroNode, fleet_specs, open_loop_telemetry
from morph.agent import RliAgent, RliConfig
from morph.arms import ArmSet
from morph.bandit import LinearStats
from morph.context import EpochTelemetry
from morph.ope import (
    LoggedDecision,
    direct_method,
    doubly_robust,
    ips,
    log_record,
    snips,
)
from morph.peers import (
    DP_WINDOW,
    ExperienceSharer,
    GroupArchive,
    PeerNetwork,
    SharingConfig,
    absorb,
    reward_clip,
)
from morph.policy import MorphPolicy, NodeState, PolicyConfig
from morph.reward import reward
from morph.zoo.manifest import ZooMissingError, default_zoo_dir, load_manifest

POLICIES = ("static", "rules", "rli", "rli+peers", "rli+peers+dp", "oracle")
COLD_POLICIES = ("rli", "rli+peers", "rli+peers+dp", "oracle")
SMOOTH = 20  # epochs in the moving average of the learning curves


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_arms(zoo: str | None, cost_metric: str) -> tuple[ArmSet, str]:
    try:
        manifest = load_manifest(zoo or default_zoo_dir())
        return ArmSet.from_manifest(manifest, cost_metric=cost_metric), f"zoo manifest {manifest.root}"
    except ZooMissingError as err:
        log(f"{err}; using the thermal model's nominal figures")
        return ArmSet.nominal(), "nominal figures (no zoo)"


class Run:
    """One policy over the fleet: the per-epoch rewards and what the nodes went through.

    Node n joins the fleet ``join_s[n]`` seconds into the run (0 for all in the
    main comparison) and lives on its own clock from then: its epoch k holds
    its own seconds 10k+2 .. 10k+11, and epochs after the run's end are NaN.
    """

    def __init__(self, name: str, specs, arms: ArmSet, config: RliConfig, seconds: int, join_s=None):
        self.name, self.arms, self.config = name, arms, config
        self.nodes = [HeteroNode(s, arms) for s in specs]
        self.join_s = [int(j) for j in (join_s or [0] * len(specs))]
        for node, j in zip(self.nodes, self.join_s):
            node.clock_offset_s = float(j)  # a newcomer's telemetry is stamped in fleet time
        self.epochs = int((seconds - 1) // config.epoch_s)
        self.seconds = self.epochs * int(config.epoch_s) + 1
        self.rewards = np.full((len(specs), self.epochs), np.nan)
        self.floor = np.full((len(specs), self.epochs), np.nan)  # oracle runs: a uniformly random allowed arm
        self.slo_violations = 0
        self.accuracy_sum = 0.0
        self._meters = [EpochTelemetry() for _ in specs]
        self._switched = np.zeros((len(specs), self.epochs + 1), dtype=bool)

    def account(self, n: int, i: int, sample: dict) -> None:
        """Score second ``i`` of node ``n``'s own clock into its epoch."""
        if i < 2:
            return
        e = int(self.config.epoch_s)
        meter = self._meters[n]
        meter.add(sample, self.config.constraints)
        if (i - 1) % e == 0:
            k = (i - 2) // e
            m = meter.measurement(sample["accuracy"])
            self.rewards[n, k] = reward(m, self.config.constraints, self.config.weights, bool(self._switched[n, k]))
            self.slo_violations += m.latency_ms > self.config.constraints.max_latency_ms or \
                m.accuracy < self.config.constraints.min_accuracy
            self.accuracy_sum += m.accuracy
            meter.reset()

    def switched(self, n: int, i: int) -> None:
        self._switched[n, min((i - 1) // int(self.config.epoch_s), self.epochs)] = True

    def summary(self) -> dict:
        nodes = self.nodes
        served = sum(nd.served_total for nd in nodes)
        return {
            "mean_reward": round(float(np.nanmean(self.rewards)), 4),
            "max_temp_c": round(max(nd.max_temp_c for nd in nodes), 2),
            "seconds_above_85": sum(nd.seconds_above[85.0] for nd in nodes),
            "seconds_above_90": sum(nd.seconds_above[90.0] for nd in nodes),
            "energy_j_per_inference": round(sum(nd.energy_j for nd in nodes) / max(served, 1.0), 4),
            "accuracy_served": round(self.accuracy_sum / max(int(np.isfinite(self.rewards).sum()), 1), 4),
            "slo_violation_epochs": int(self.slo_violations),
        }


def oracle_pick(node: HeteroNode, arms: ArmSet, config: RliConfig, allowed: list[int]) -> tuple[int, float, float]:
    """The arm whose next epoch earns the most, from the simulator's true state; (index, its reward,
    the mean reward of the allowed arms: what a uniformly random choice would earn)."""
    best, best_r, total = allowed[0], -1e9, 0.0
    current = (node.variant, node.precision, node.batch, node.cache, node.pipeline)
    for a in allowed:
        arm = arms[a]
        cmd = {"to_variant": arm.variant, "to_precision": arm.precision, "batch_size": arm.batch,
               "cache": arm.cache, "pipeline": arm.pipeline}
        r = preview_reward(node, cmd, config, (arm.variant, arm.precision, arm.batch, arm.cache, arm.pipeline)
                           != current)
        total += r
        if r > best_r:
            best, best_r = a, r
    return best, best_r, total / len(allowed)


def preview_reward(node: HeteroNode, cmd: dict, config: RliConfig, switched: bool) -> float:
    meter = EpochTelemetry(last_ts_ms=int(node.elapsed_s * 1000))
    for s in node.preview(cmd, int(config.epoch_s)):
        meter.add(s, config.constraints)
    return reward(meter.measurement(s["accuracy"]), config.constraints, config.weights, switched)


def simulate(name: str, specs, arms: ArmSet, config: RliConfig, seconds: int, sharing: SharingConfig | None = None,
             group_size: int = 50, ope=None, join_s=None, live_s: int | None = None) -> Run:
    """Run policy ``name`` over the fleet; ``ope`` (candidate, log list) logs decisions of an rli run;
    ``join_s`` (seconds into the run at which each node joins; all at 0 by default) staggers the fleet;
    ``live_s`` (default: to the end) stops every node that many seconds after it joined."""
    run = Run(name, specs, arms, config, seconds, join_s)
    nodes = run.nodes
    policy, agent = MorphPolicy(PolicyConfig()), RliAgent(arms, config)
    states = [NodeState.new(s.node_id) if name == "rules" else agent.new_state(s.node_id) for s in specs]
    peers = Peers(specs, sharing, group_size, config.seed) if sharing is not None else None
    pending_log = [None] * len(specs)
    for t in range(1, run.seconds + 1):
        for n, node in enumerate(nodes):
            i = t - run.join_s[n]  # the node's own clock
            if i < 1 or (live_s is not None and i > live_s):
                continue
            sample = node.step(1.0)
            run.account(n, i, sample)
            if name in ("static", "oracle", "rules"):
                _fixed_policy_step(run, name, n, i, node, sample, policy, states[n])
                continue
            d = agent.decide(states[n], sample)
            if d is None:
                continue
            if d.command is not None:
                node.apply(d.command)
                run.switched(n, i)
            if ope is not None:
                _log_decision(ope, pending_log, n, d, node, arms, config)
            if peers is not None:
                peers.share(agent, states, n, d)
        if t % 1800 == 0:
            log(f"  {name}: {t / 3600:.1f} h simulated, mean reward so far {np.nanmean(run.rewards):.3f}")
    run.states, run.agent = states, agent
    return run


def _fixed_policy_step(run: Run, name: str, n: int, i: int, node: HeteroNode, sample: dict, policy, state) -> None:
    """One second of a policy that does not learn: static, the rules, or the oracle."""
    if name == "rules":
        cmd = policy.decide(state, sample)
        if cmd is not None:
            node.apply(cmd)
            run.switched(n, i)
        return
    e, config, arms = int(run.config.epoch_s), run.config, run.arms
    if name != "oracle" or (i - 1) % e != 0:
        return
    allowed = [k for k, a in enumerate(arms) if a.fallback or arms.profile(a).accuracy >= config.constraints.min_accuracy]
    a, _, mean_r = oracle_pick(node, arms, config, allowed)
    k = (i - 1) // e
    if k < run.epochs:
        run.floor[n, k] = mean_r
    arm = arms[a]
    if (arm.variant, arm.precision, arm.batch, arm.cache, arm.pipeline) != \
            (node.variant, node.precision, node.batch, node.cache, node.pipeline):
        node.apply({"to_variant": arm.variant, "to_precision": arm.precision,
                    "batch_size": arm.batch, "cache": arm.cache, "pipeline": arm.pipeline})
        run.switched(n, i)


class Peers:
    """The peer network of one run: each node's sharer, the groups, and every node's latest context."""

    def __init__(self, specs, sharing: SharingConfig, group_size: int, seed: int):
        self.sharing = sharing
        self.index = {s.node_id: n for n, s in enumerate(specs)}
        self.network = PeerNetwork([s.node_id for s in specs], group_size=group_size, ttl=sharing.ttl, seed=seed)
        self.sharers = [ExperienceSharer(s.node_id, self.network.group_of[s.node_id], sharing,
                                         random.Random(f"dp-{seed}-{s.node_id}")) for s in specs]
        self.contexts = [None] * len(specs)
        self.archives = {g: GroupArchive(sharing.archive, reward_variance=sharing.reward_variance,
                                         between_variance=sharing.between_variance) for g in self.network.groups}

    def share(self, agent: RliAgent, states: list, n: int, d) -> None:
        """Node ``n`` decided ``d``: a node that just joined catches up on its group's archive; its closed
        decision is released and peers that have started absorb it."""
        group = self.network.group_of[self.sharers[n].node_id]
        if self.contexts[n] is None:
            self.contexts[n] = d.context
            for exp in self.archives[group].records():
                absorb(agent, states[n], exp, 1, d.context, self.sharing)
        self.contexts[n] = d.context
        if d.previous_reward is None:
            return
        for exp in self.sharers[n].record(d.previous_bucket, agent.arms[d.previous_arm].name, d.previous_reward,
                                          d.ts_ms):
            self.archives[group].add(exp)
            for receiver, hops in self.network.deliver(exp):
                r = self.index[receiver]
                if self.contexts[r] is not None:
                    absorb(agent, states[r], exp, hops, self.contexts[r], self.sharing)


def _log_decision(ope, pending_log, n, d, node, arms, config) -> None:
    """Log decision ``d`` for off-policy evaluation, with the candidate's true value at this state."""
    candidate, logs, truths, records = ope
    prev = pending_log[n]
    if prev is not None and d.previous_reward is not None:
        phi, safe, arm, p, true_value, decision = prev
        logs.append(LoggedDecision(phi, safe, arm, p, d.previous_reward))
        truths.append(true_value)
        if records is not None:
            records.append(log_record(decision, d.previous_reward))
    phi = d.phi.astype(np.float32)
    a = arms[candidate(LoggedDecision(phi, d.safe, d.arm_index, d.propensity, 0.0))]
    cmd = {"to_variant": a.variant, "to_precision": a.precision, "batch_size": a.batch, "cache": a.cache,
           "pipeline": a.pipeline}
    true_value = preview_reward(node, cmd, config, a != d.context.current)
    pending_log[n] = (phi, d.safe, d.arm_index, d.propensity, true_value, d)


def moving_mean(curve: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    c = np.cumsum(np.insert(curve, 0, 0.0))
    k = np.arange(1, len(curve) + 1)
    lo = np.maximum(k - window, 0)
    return (c[k] - c[lo]) / (k - lo)


def sharing_for(name: str, args, clip: tuple | None = None) -> SharingConfig | None:
    """The peers' sharing for policy ``name``; under DP rewards are clipped to ``clip`` (`reward_clip`)."""
    if name == "rli+peers":
        return SharingConfig()
    if name == "rli+peers+dp":
        return SharingConfig(epsilon=args.epsilon, window=args.dp_window, budget=1e9,
                             clip=SharingConfig.clip if clip is None else tuple(clip))
    return None


def join_times(seed: int, nodes: int, seconds: int, horizon: int, epoch_s: float) -> tuple[list[int], list[int]]:
    """(join second of every node, the newcomers): a random half starts the fleet, the other half joins
    one at a time, evenly spaced from a quarter of the run to ``horizon`` decisions before its end."""
    order = list(range(nodes))
    random.Random(f"join-{seed}").shuffle(order)
    newcomers = sorted(order[nodes // 2:])
    lo, hi = seconds // 4, seconds - int(horizon * epoch_s) - 2 * int(epoch_s)
    join = [0] * nodes
    for j, n in enumerate(newcomers):
        join[n] = int(lo + (hi - lo) * j / max(len(newcomers) - 1, 1))
    return join, newcomers


def cohort_seed(seed: int, cohort: int) -> int:
    """The seed of cold-start cohort ``cohort`` of run ``seed``: cohort 0 is the run's own fleet, the others
    fleets of their own (traits, events, join order, the agents' and the DP noise's draws), apart from
    every other run's seeds and from the off-policy candidate's fleet (``seed`` + 1000).

    >>> [cohort_seed(3, c) for c in range(3)]
    [3, 100006, 200009]
    """
    return seed if cohort == 0 else seed + 100_003 * cohort


def cold_start(args, arms: ArmSet, config: RliConfig, seconds: int, policies=COLD_POLICIES) -> dict:
    """The peer-learning protocol: rli alone, with peers, with peers under DP, and the oracle on a fleet
    that newcomers join one by one; each newcomer's rewards counted from its own first decision.

    ``args.cohorts`` independent fleets of ``args.cold_nodes`` each (`cohort_seed`) run it, and their
    newcomers' curves are pooled: one fleet's 16 newcomers leave the mean curve so noisy that a
    threshold crossing moves by several decisions with the newcomers drawn (a bootstrap over them put
    dp_gain_retained anywhere in [0.0, 0.62] on seed 3); more fleets of the same size, not a larger
    fleet, so that the group, the join spacing and the archive are those of the protocol."""
    curves = {}
    for cohort in range(args.cohorts):
        seed = cohort_seed(args.seed, cohort)
        specs = fleet_specs(seed, args.cold_nodes, seconds)
        join, newcomers = join_times(seed, args.cold_nodes, seconds, args.horizon, config.epoch_s)
        cfg = dataclasses.replace(config, seed=seed)
        for name in policies:
            t0 = time.perf_counter()
            if name == "oracle":
                run = oracle_newcomers(specs, join, newcomers, arms, cfg, seconds, args.horizon)
                curves.setdefault(name, []).append(run.rewards[:, :args.horizon])
                curves.setdefault("random", []).append(run.floor[:, :args.horizon])
            else:
                run = simulate(name, specs, arms, cfg, seconds, sharing_for(name, args, reward_clip(cfg, arms)),
                               args.group_size, join_s=join)
                curves.setdefault(name, []).append(run.rewards[newcomers, :args.horizon])
            log(f"cold start, cohort {cohort + 1} of {args.cohorts}, {name}: {time.perf_counter() - t0:.0f} s wall")
    return {name: np.concatenate(c) for name, c in curves.items()}


def oracle_newcomers(specs, join: list, newcomers: list, arms: ArmSet, config: RliConfig, seconds: int,
                     horizon: int) -> Run:
    """The oracle's run of the cold start, on the newcomers only and up to their horizon: the rows of
    the whole fleet's oracle run that the protocol reads, the same to the bit, at a fraction of its cost.

    An oracle node learns nothing from the fleet and its simulator draws from its own spec only, so its
    rewards do not depend on the other nodes, nor on what comes after its first ``horizon`` decisions;
    the previews of every allowed arm per epoch made this run most of the cold start's time."""
    live = int((horizon + 2) * config.epoch_s) + 1
    span = min(seconds, max(join[n] for n in newcomers) + live)
    return simulate("oracle", [specs[n] for n in newcomers], arms, config, span, join_s=[join[n] for n in newcomers],
                    live_s=live)


def decisions_to(fraction: float, mine: np.ndarray, oracle: np.ndarray, window: int) -> int | None:
    """First own decision at which the newcomers' mean reward (moving mean over ``window`` decisions)
    reaches ``fraction`` of the oracle's over the same nodes and decisions; None within the horizon."""
    hit = np.flatnonzero(moving_mean(mine.mean(axis=0), window) >= fraction * moving_mean(oracle.mean(axis=0), window))
    return int(hit[0]) + 1 if len(hit) else None


def gap_closed_at(fraction: float, mine: np.ndarray, curves: dict, window: int) -> int | None:
    """First own decision at which the newcomers have closed ``fraction`` of the gap between a uniformly
    random allowed arm and the oracle (the normalisation of Atari's human-normalised scores)."""
    sm = {k: moving_mean(v.mean(axis=0), window) for k, v in (("p", mine), ("o", curves["oracle"]),
                                                               ("r", curves["random"]))}
    hit = np.flatnonzero(sm["p"] - sm["r"] >= fraction * (sm["o"] - sm["r"]))
    return int(hit[0]) + 1 if len(hit) else None


def peer_figures(curves: dict, window: int) -> dict:
    """Decisions to each fraction per learner, the speedups, early regret: the JSON's peer-learning part."""
    out, h = {}, curves["oracle"].shape[1]
    learners = {"no_peers": "rli", "peers": "rli+peers", "peers_dp": "rli+peers+dp"}
    for pct in (90, 95):
        to = {k: decisions_to(pct / 100, curves[v], curves["oracle"], window) for k, v in learners.items()}
        out.update({f"decisions_to_{pct}pct_{k}": v for k, v in to.items()})
        sp, kept = speedups(to, h)
        suffix = "" if pct == 90 else f"_{pct}"
        out[f"peer_speedup{suffix}"], out[f"dp_gain_retained{suffix}"] = sp, kept
    for pct in (50, 70):
        to = {k: gap_closed_at(pct / 100, curves[v], curves, window) for k, v in learners.items()}
        out.update({f"decisions_to_close_{pct}pct_gap_{k}": v for k, v in to.items()})
        out[f"peer_speedup_gap{pct}"], out[f"dp_gain_retained_gap{pct}"] = speedups(to, h)
    for k in (10, 30, h):
        regrets = {n: float(np.nansum(curves["oracle"][:, :k] - curves[v][:, :k])) for n, v in learners.items()}
        out[f"newcomer_regret_first_{k}"] = {n: round(r, 2) for n, r in regrets.items()}
    return out


def cohort_figures(curves: dict, cohorts: int, window: int) -> dict:
    """Each cohort's peer_speedup and dp_gain_retained (at 90 %), from its own newcomers' rows of the
    pooled curves (`cold_start` stacks the cohorts in order): the spread the pooled figures average over.

    Examples
    --------
    >>> rising = np.linspace(0.5, 1.0, 20)
    >>> curves = {k: np.tile(rising, (4, 1)) for k in ("rli", "rli+peers", "rli+peers+dp")}
    >>> curves["oracle"] = curves["random"] = np.ones((4, 20))
    >>> cohort_figures(curves, 2, 1)
    {'cohort_peer_speedup': [1.0, 1.0], 'cohort_dp_gain_retained': [None, None]}
    """
    rows = curves["oracle"].shape[0] // cohorts
    out = {"cohort_peer_speedup": [], "cohort_dp_gain_retained": []}
    for c in range(cohorts):
        peer = peer_figures({k: v[c * rows:(c + 1) * rows] for k, v in curves.items()}, window)
        out["cohort_peer_speedup"].append(peer["peer_speedup"])
        out["cohort_dp_gain_retained"].append(peer["dp_gain_retained"])
    return out


def frozen_greedy(run: Run):
    """A deterministic candidate policy: greedy on the merged statistics of a finished rli run."""
    stats = LinearStats.zeros(run.agent.featurizer.dim)
    for st in run.states:
        stats = stats.merge(st.bandit.stats)
    ridge = run.agent.config.ridge
    theta = np.linalg.solve(stats.gram + ridge * np.eye(len(stats.moment)), stats.moment)

    def policy(d: LoggedDecision) -> int:
        allowed = np.flatnonzero(d.safe)
        return int(allowed[int(np.argmax(d.phi[allowed] @ theta))])
    return policy, stats


#: Events per timed segment of a flow run (`flow_rate`).
SEGMENT = 1_000


def _marking(items: list, marks: list):
    """``items`` one by one, noting (wall, CPU) time in ``marks`` before every `SEGMENT`-th is taken."""
    wall, cpu = time.perf_counter, time.process_time
    for i, item in enumerate(items):
        if i % SEGMENT == 0:
            marks.append((wall(), cpu()))
        yield item


def flow_rate(arms_from_zoo: str | None, seed: int, nodes: int = 50, seconds: int = 400, pairs: int = 7) -> dict:
    """Telemetry events/s through the control flow on one Bytewax worker (testing source and sink, no
    Kafka), on ``nodes`` heterogeneous nodes of ``seed`` over ``seconds``, with the rules and with the
    agent (sharing on, DP on: every node's releases are produced), on the same samples. No peer experience
    comes back in: the flow's peers input is given none (on Kafka the releases come back through
    ``liquid.experience``, an input of its own, and cost an absorb each).

    One pair of runs first, not counted: it loads the agent's compiled kernels and warms both flows'
    code. Then ``pairs`` pairs, the order inside a pair alternating. This machine switches between a
    fast and a slow state (~1.6× apart) several times a second, so a whole run (0.3–0.8 s) is rarely
    timed in one state, and the best whole run of each policy, or the ratio within a pair, moves by
    ±20 % between measures. So each run is timed in segments of `SEGMENT` events (the first from the
    run's start, the last to its end, end-of-input snapshots included) and a policy's time is the sum
    over segments of the segment's fastest run: its rate with the machine in its fast state, each
    segment's runs a few seconds apart. Wall clock and per second of this process's CPU time; the
    whole runs' ratio per pair beside it, for their spread."""
    import os

    from bytewax.testing import TestingSink, TestingSource, run_main

    from flows.control import build
    from flows.spec import FlowSpec

    if arms_from_zoo:
        os.environ["LIQUID_ZOO_DIR"] = arms_from_zoo
    items = [("Telemetry", sample) for sample in open_loop_telemetry(seed, nodes, seconds)]
    policies = {"rules": {}, "rli": {"policy_kind": "rli"}}
    fastest = {name: None for name in policies}  # per segment: (wall, CPU) seconds of its fastest run
    out = {"events": len(items), "pairs": pairs, "pair_ratios": []}
    # The simulations before leave a large heap (runs, decision logs): frozen, the garbage collector
    # does not walk it on every collection the flow triggers, as it would not in a flow process.
    gc.collect()
    gc.freeze()
    for pair in range(pairs + 1):
        runs = {}
        for name in (("rules", "rli") if pair % 2 else ("rli", "rules")):
            sink, marks = [], []
            flow = build(FlowSpec("control", bootstrap="unused:9092", deterministic=True, options=policies[name]),
                         source=TestingSource(_marking(items, marks)), sink=TestingSink(sink))
            marks.append((time.perf_counter(), time.process_time()))
            run_main(flow)
            marks.append((time.perf_counter(), time.process_time()))
            marks = np.array(marks)
            runs[name] = marks[-1, 0] - marks[0, 0]
            out[f"{name}_commands"] = sum(1 for _, (kind, _) in sink if kind == "MorphCommand")
            if pair:  # not the warm-up pair
                segments = np.diff(marks, axis=0)
                fastest[name] = segments if fastest[name] is None else np.minimum(fastest[name], segments)
                out[f"{name}_best_run"] = max(out.get(f"{name}_best_run", 0.0), len(items) / runs[name])
        if pair:
            out["pair_ratios"].append(round(runs["rules"] / runs["rli"], 3))
    for name, segments in fastest.items():
        out[name], out[f"{name}_cpu"] = len(items) / segments.sum(axis=0)
    out.update(peers_heard_cost(items))
    gc.unfreeze()
    return out


def peers_heard_cost(items: list, repeats: int = 3) -> dict:
    """CPU per telemetry sample of the control flow's morph step alone (no engine), with the rules, with the
    agent, and with the agent while every node also hears its group's releases (one group: each release
    reaches the 49 other nodes, in time order, as `operators.peers.PeerGroup` forwards them on Kafka).

    `flow_rate`'s testing flow gets no peers' experience back; this is what hearing it costs a node's step.
    Best of ``repeats`` alternating runs each."""
    from flows.spec import FlowSpec
    from operators.control import MorphStep
    from operators.events import Event
    from operators.from_spec import agent_for, policy_for, sharer_factory_for
    from operators.peers import PeerGroup

    def run(options: dict, hear: bool) -> tuple[float, int]:
        spec = FlowSpec("control", bootstrap="unused:9092", deterministic=True, options=options)
        agent = agent_for(spec)
        step = MorphStep(policy_for(spec), None, stamp_wall_clock=False, agent=agent,
                         sharer_factory=sharer_factory_for(spec, agent), snapshots=False)
        group, states, heard = PeerGroup(), {}, 0
        c0 = time.process_time()
        for _, record in items:
            node = record["node_id"]
            states[node], outputs = step(states.get(node), Event("Telemetry", record, "edge.telemetry", 0, 0))
            if hear:
                for name, released in outputs:
                    if name == "Experience":
                        for member, event in group.forward(Event("Experience", released, "liquid.experience", 0, 0)):
                            states[member], _ = step(states.get(member), event)
                            heard += 1
        return (time.process_time() - c0) / len(items), heard

    best, heard = {}, 0
    for _ in range(repeats):
        for name, options, hear in (("rules", {}, False), ("rli", {"policy_kind": "rli"}, False),
                                    ("rli_heard", {"policy_kind": "rli"}, True)):
            cpu, n = run(options, hear)
            best[name] = min(best.get(name, float("inf")), cpu)
            heard = max(heard, n)
    return {f"step_us_{name}": 1e6 * cpu for name, cpu in best.items()} | {"step_experience_heard": heard}


def plot_curves(runs: dict, curves: dict, window: int, path: Path) -> None:
    """Left: the fleet's mean reward per decision, every policy. Right (the seed's Figure 3): newcomers'
    mean reward against their own decisions since joining, alone, with peers, with peers under DP."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5))
    for name, run in runs.items():
        ax.plot(np.arange(1, run.epochs + 1), moving_mean(np.nanmean(run.rewards, axis=0)), label=name)
    ax.set_xlabel("decisions per node (10 s epochs)")
    ax.set_ylabel(f"fleet mean reward (moving mean over {SMOOTH} decisions)")
    ax.set_title("Whole fleet, all nodes from the start")
    ax.legend()
    for name in ("rli", "rli+peers", "rli+peers+dp", "oracle", "random"):
        c = curves[name]
        bx.plot(np.arange(1, c.shape[1] + 1), moving_mean(c.mean(axis=0), window),
                label={"random": "a random allowed arm"}.get(name, name), ls="--" if name in ("oracle", "random") else "-")
    bx.set_xlabel("decisions since the node joined the fleet")
    bx.set_ylabel(f"newcomers' mean reward (moving mean over {window})")
    bx.set_title(f"Cold start: {curves['rli'].shape[0]} nodes join a running fleet (measured)")
    bx.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Prints per-policy figures; the last stdout line is one JSON object.")
    ap.add_argument("--seed", type=int, default=0, help="node heterogeneity, sensor noise, event timing (default 0)")
    ap.add_argument("--nodes", type=int, default=16, help="simulated nodes (default 16)")
    ap.add_argument("--hours", type=float, default=2.0, help="simulated hours per policy (default 2)")
    ap.add_argument("--epsilon", type=float, default=1.0, help="DP ε per release for rli+peers+dp (default 1)")
    ap.add_argument("--dp-window", type=int, default=DP_WINDOW,
                    help=f"decisions per DP release window: each window releases every (bucket, arm) cell's noised "
                         f"reward sum and count at ε once (default {DP_WINDOW})")
    ap.add_argument("--group-size", type=int, default=50, help="peer group size (default 50)")
    ap.add_argument("--cold-nodes", type=int, default=32,
                    help="nodes in the cold-start (peer learning) fleet; half of them join it one by one (default 32)")
    ap.add_argument("--cohorts", type=int, default=6,
                    help="independent cold-start fleets of --cold-nodes whose newcomers are pooled (default 6: 96 "
                         "newcomers; one fleet's 16 leave the threshold crossings mostly noise)")
    ap.add_argument("--horizon", type=int, default=60,
                    help="decisions per newcomer measured from its own start (default 60, 10 min)")
    ap.add_argument("--window", type=int, default=5,
                    help="moving mean (decisions) of the newcomers' learning curves (default 5)")
    ap.add_argument("--zoo", help="zoo directory with manifest.json (default: the project's zoo)")
    ap.add_argument("--cost-metric", default="flops", help="manifest field that stands for power (default flops)")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-rli"), help="where the learning-curve PNG goes")
    flow = ap.add_mutually_exclusive_group()
    flow.add_argument("--no-flow", dest="flow", action="store_false",
                      help="skip the control-flow throughput part (its JSON figures are then null)")
    flow.add_argument("--flow-only", action="store_true",
                      help="run only the control-flow throughput part (under a minute; not the learning runs), on --seed's fleet")
    ap.add_argument("--log-out", action="store_true",
                    help="also write the rli run's decision log (JSON lines) and the candidate's statistics to --out, "
                         "for `liquid evaluate policy`")
    return ap.parse_args()


def run_policies(args, arms: ArmSet, config: RliConfig, seconds: int, ope) -> dict:
    """Every policy of POLICIES on the same fleet; the rli run also logs decisions into ``ope``."""
    specs = fleet_specs(args.seed, args.nodes, seconds)
    runs = {}
    for name in POLICIES:
        t0 = time.perf_counter()
        runs[name] = simulate(name, specs, arms, config, seconds, sharing_for(name, args, reward_clip(config, arms)),
                              args.group_size,
                              ope=ope if name == "rli" else None)
        log(f"{name}: {time.perf_counter() - t0:.0f} s wall")
    return runs


def speedups(to: dict, horizon: int) -> tuple:
    """(peer speedup, share of it DP keeps) from decisions to a level without peers, with, with DP.

    A learner that does not reach the level within the horizon is counted at horizon + 1 (a lower bound
    on its decisions, so a speedup over it is a lower bound too)."""
    n, p, d = (to[k] or horizon + 1 for k in ("no_peers", "peers", "peers_dp"))
    speedup, dp_speedup = n / p, n / d
    kept = (dp_speedup - 1) / (speedup - 1) if speedup > 1 else None
    return round(speedup, 3), round(kept, 3) if kept is not None else None


def print_table(args, arms_from, n_arms, runs, regret, summaries) -> None:
    print(f"seed {args.seed}, {args.nodes} nodes, {args.hours} h each, {n_arms} arms ({arms_from}); machine loaded")
    print(f"{'policy':14} {'regret':>9} {'reward':>7} {'maxT':>6} {'s>85':>6} {'s>90':>5} {'J/inf':>7} "
          f"{'acc':>6} {'SLO':>5}")
    for n in runs:
        s = summaries[n]
        print(f"{n:14} {regret[n]:9.1f} {s['mean_reward']:7.3f} {s['max_temp_c']:6.1f} {s['seconds_above_85']:6.0f} "
              f"{s['seconds_above_90']:5.0f} {s['energy_j_per_inference']:7.3f} {s['accuracy_served']:6.3f} "
              f"{s['slo_violation_epochs']:5d}")


def print_peer_table(args, peer: dict) -> None:
    n_new = args.cold_nodes - args.cold_nodes // 2
    print(f"cold start: {n_new} of {args.cold_nodes} nodes join a running fleet one by one, {args.cohorts} fleet(s), "
          f"{n_new * args.cohorts} newcomers; decisions counted from each newcomer's own start, mean over newcomers, "
          f"moving mean over {args.window}, horizon {args.horizon}")
    print(f"{'learner':10} {'to90%':>6} {'to95%':>6} {'gap50%':>7} {'gap70%':>7} {'regret@10':>10} {'@30':>7} "
          f"{'@' + str(args.horizon):>7}")
    for k in ("no_peers", "peers", "peers_dp"):
        r = [peer[f"newcomer_regret_first_{h}"][k] for h in (10, 30, args.horizon)]
        print(f"{k:10} {peer[f'decisions_to_90pct_{k}']!s:>6} {peer[f'decisions_to_95pct_{k}']!s:>6} "
              f"{peer[f'decisions_to_close_50pct_gap_{k}']!s:>7} {peer[f'decisions_to_close_70pct_gap_{k}']!s:>7} "
              f"{r[0]:10.1f} {r[1]:7.1f} {r[2]:7.1f}")
    print(f"peer speedup {peer['peer_speedup']} at 90 %, {peer['peer_speedup_95']} at 95 %, "
          f"{peer['peer_speedup_gap50']} / {peer['peer_speedup_gap70']} at 50 / 70 % of the gap; DP keeps "
          f"{peer['dp_gain_retained']} / {peer['dp_gain_retained_95']} / {peer['dp_gain_retained_gap50']} / "
          f"{peer['dp_gain_retained_gap70']} of it")
    print(f"per cohort ({args.cohorts} fleets), peer speedup {peer['cohort_peer_speedup']}, DP keeps "
          f"{peer['cohort_dp_gain_retained']}")


def main() -> int:
    args = parse_args()
    if args.flow_only:
        rate = flow_rate(args.zoo, args.seed)
        print_flow(rate)
        emit_result({"seed": args.seed, **flow_figures(rate)})
        return 0
    arms, arms_from = load_arms(args.zoo, args.cost_metric)
    config = RliConfig(seed=args.seed)
    seconds = int(args.hours * 3600)
    log(f"{len(arms)} arms from {arms_from}; {args.nodes} nodes, {args.hours} h, seed {args.seed}")

    log("training the off-policy candidate on another fleet (seed + 1000)")
    trained = simulate("rli", fleet_specs(args.seed + 1000, max(4, args.nodes // 2), seconds), arms, config, seconds)
    candidate, candidate_stats = frozen_greedy(trained)
    ope_logs, ope_truth, records = [], [], [] if args.log_out else None
    runs = run_policies(args, arms, config, seconds, (candidate, ope_logs, ope_truth, records))
    curves = cold_start(args, arms, config, seconds)
    peer = peer_figures(curves, args.window) | cohort_figures(curves, args.cohorts, args.window)

    oracle = runs["oracle"]
    regret = {n: float(np.nansum(oracle.rewards - r.rewards)) for n, r in runs.items()}
    true_value = float(np.mean(ope_truth))
    estimates = {"ips": ips(ope_logs, candidate), "snips": snips(ope_logs, candidate),
                 "dr": doubly_robust(ope_logs, candidate), "direct": direct_method(ope_logs, candidate)}
    rate = flow_rate(args.zoo, args.seed) if args.flow else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"learning-curves-seed{args.seed}.png"
    if records is not None:
        with (out / f"decisions-seed{args.seed}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        (out / f"candidate-seed{args.seed}.json").write_text(json.dumps(candidate_stats.to_dict()))
        log(f"decision log and candidate statistics in {out}")
    plot_curves(runs, curves, args.window, png)

    summaries = {n: r.summary() for n, r in runs.items()}
    print_table(args, arms_from, len(arms), runs, regret, summaries)
    print_peer_table(args, peer)
    print(f"off-policy ({len(ope_logs)} logged decisions): true {true_value:.4f}; "
          + ", ".join(f"{k} {v:.4f}" for k, v in estimates.items()))
    if rate is not None:
        print_flow(rate)
    print(f"learning curves: {png}")
    emit_result(result_json(args, len(arms), regret, summaries, peer, true_value, estimates, rate))
    return 0


def print_flow(rate: dict) -> None:
    print(f"control flow, 1 worker, no Kafka ({rate['events']} events; {rate['pairs']} pairs of runs after a warm-up "
          f"pair, each segment of {SEGMENT} events at its fastest): agent on {rate['rli']:.0f} events/s, rules "
          f"{rate['rules']:.0f} events/s, ratio {rate['rli'] / rate['rules']:.3f}; per CPU second agent "
          f"{rate['rli_cpu']:.0f}, rules {rate['rules_cpu']:.0f}, ratio {rate['rli_cpu'] / rate['rules_cpu']:.3f}; "
          f"whole runs: the best agent {rate['rli_best_run']:.0f}, rules {rate['rules_best_run']:.0f} events/s, "
          f"agent / rules per pair {' '.join(f'{r:.3f}' for r in rate['pair_ratios'])}")
    print(f"morph step alone, µs of CPU per telemetry sample: rules {rate['step_us_rules']:.2f}, agent "
          f"{rate['step_us_rli']:.2f}, agent hearing its group ({rate['step_experience_heard']} experience records "
          f"heard, DP ε = 1) {rate['step_us_rli_heard']:.2f}")


def flow_figures(rate: dict | None) -> dict:
    """The JSON's control-flow part; null figures when ``--no-flow`` skipped it."""
    if rate is None:
        return {k: None for k in ("events_per_s_agent_on", "events_per_s_rules", "events_per_s_ratio",
                                  "events_per_s_pair_ratios",
                                  "events_per_cpu_s_agent_on", "events_per_cpu_s_rules", "events_per_cpu_s_ratio",
                                  "step_us_per_event_rules", "step_us_per_event_agent",
                                  "step_us_per_event_agent_hearing_peers", "step_experience_heard")} | {
            "events_per_s_measured_in": "not measured (--no-flow)"}
    return {
        "events_per_s_agent_on": round(rate["rli"]), "events_per_s_rules": round(rate["rules"]),
        "events_per_s_ratio": round(rate["rli"] / rate["rules"], 3),
        "events_per_s_pair_ratios": rate["pair_ratios"],   # whole runs: their spread
        "events_per_cpu_s_agent_on": round(rate["rli_cpu"]), "events_per_cpu_s_rules": round(rate["rules_cpu"]),
        "events_per_cpu_s_ratio": round(rate["rli_cpu"] / rate["rules_cpu"], 3),
        "events_per_s_measured_in": "control flow on 1 Bytewax worker, testing source and sink (no Kafka)",
        "step_us_per_event_rules": round(rate["step_us_rules"], 2),
        "step_us_per_event_agent": round(rate["step_us_rli"], 2),
        "step_us_per_event_agent_hearing_peers": round(rate["step_us_rli_heard"], 2),
        "step_experience_heard": rate["step_experience_heard"],
    }


def result_json(args, n_arms, regret, summaries, peer, true_value, estimates, rate) -> dict:
    rli, rules = summaries["rli"], summaries["rules"]
    return {
        "seed": args.seed, "nodes": args.nodes, "hours": args.hours, "arms": n_arms,
        "regret_rli": round(regret["rli"], 2), "regret_rules": round(regret["rules"], 2),
        "regret_static": round(regret["static"], 2),
        "regret_rli_peers": round(regret["rli+peers"], 2), "regret_rli_peers_dp": round(regret["rli+peers+dp"], 2),
        "regret_ratio_rli_to_rules": round(regret["rli"] / regret["rules"], 4) if regret["rules"] else None,
        "max_temp_c_rli": rli["max_temp_c"], "max_temp_c_rules": rules["max_temp_c"],
        "seconds_above_90_rli": rli["seconds_above_90"], "seconds_above_90_rules": rules["seconds_above_90"],
        "seconds_above_85_rli": rli["seconds_above_85"], "seconds_above_85_rules": rules["seconds_above_85"],
        **peer,
        "peer_protocol": f"cold start: {args.cold_nodes - args.cold_nodes // 2} of {args.cold_nodes} nodes join one "
                         f"by one, {args.cohorts} fleet(s) pooled; own decisions, mean over newcomers, moving mean "
                         f"{args.window}, horizon {args.horizon}",
        "ope_true_value": round(true_value, 4),
        "ope_estimates": {k: round(v, 4) for k, v in estimates.items()},
        "ope_relative_error": round(abs(estimates["dr"] - true_value) / abs(true_value), 4),
        "ope_relative_error_ips": round(abs(estimates["ips"] - true_value) / abs(true_value), 4),
        **flow_figures(rate),
        "summaries": summaries,
    }


if __name__ == "__main__":
    sys.exit(main())
