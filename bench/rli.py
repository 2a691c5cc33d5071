"""Learned adaptation (RLI) against the rules, on the same heterogeneous simulated fleet.

Every policy runs the same scenarios (`edge.heterogeneous`: node traits, events
and sensor noise from ``--seed``) for ``--hours`` of simulated time, one sample
per node per second, and is scored with the same reward (`morph.reward`,
balanced weights) over the same 10 s epochs:

* static: the transformer (fp32, batch 8) always;
* rules: `MorphPolicy` as deployed (thresholds, hysteresis, resource-score tiers);
* rli: the contextual-bandit agent, each node alone;
* rli+peers: nodes share experience in groups (TTL 3 hops), no privacy noise;
* rli+peers+dp: the same under the Laplace mechanism at ``--epsilon`` per release;
* oracle: knows the simulator's state and picks, every epoch, the arm whose next
  epoch earns the most (myopic, like the bandit's objective); regret is measured
  against it.

Also measured: off-policy evaluation — the rli run's logged decisions estimate
the value of a frozen greedy policy trained on a different fleet (``--seed``
+ 1000), compared with that policy's true value on the same states (the
simulator previews its arm) — and the per-sample decision rate of the agent
through the control flow against the rules (one Bytewax worker, a testing
source and sink: the flow's own cost, without Kafka; best of three alternating
runs, by wall clock and per CPU second of the process).

    python bench/rli.py [--seed N] [--nodes N] [--hours H] [--zoo DIR] [--out DIR]

Progress goes to stderr; the last line of stdout is one JSON object. The zoo
manifest supplies each model's accuracy and cost (``--zoo``, default the
project's zoo); without a built zoo the thermal model's nominal figures are used.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
from _bench import ROOT, emit_result

from edge.heterogeneous import HeteroNode, fleet_specs
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
from morph.peers import ExperienceSharer, PeerNetwork, SharingConfig, absorb
from morph.policy import MorphPolicy, NodeState, PolicyConfig
from morph.reward import reward
from morph.zoo.manifest import ZooMissingError, default_zoo_dir, load_manifest

POLICIES = ("static", "rules", "rli", "rli+peers", "rli+peers+dp", "oracle")
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
    """One policy over the fleet: the per-epoch rewards and what the nodes went through."""

    def __init__(self, name: str, specs, arms: ArmSet, config: RliConfig, seconds: int):
        self.name, self.arms, self.config = name, arms, config
        self.nodes = [HeteroNode(s, arms) for s in specs]
        self.epochs = int((seconds - 1) // config.epoch_s)
        self.seconds = self.epochs * int(config.epoch_s) + 1
        self.rewards = np.zeros((len(specs), self.epochs))
        self.slo_violations = 0
        self.accuracy_sum = 0.0
        self._meters = [EpochTelemetry() for _ in specs]
        self._switched = np.zeros((len(specs), self.epochs + 1), dtype=bool)

    def account(self, n: int, i: int, sample: dict) -> None:
        """Score second ``i`` of node ``n`` into its epoch (epoch k holds seconds 10k+2 .. 10k+11)."""
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
            "mean_reward": round(float(self.rewards.mean()), 4),
            "max_temp_c": round(max(nd.max_temp_c for nd in nodes), 2),
            "seconds_above_85": sum(nd.seconds_above[85.0] for nd in nodes),
            "seconds_above_90": sum(nd.seconds_above[90.0] for nd in nodes),
            "energy_j_per_inference": round(sum(nd.energy_j for nd in nodes) / max(served, 1.0), 4),
            "accuracy_served": round(self.accuracy_sum / max(self.rewards.size, 1), 4),
            "slo_violation_epochs": int(self.slo_violations),
        }


def oracle_pick(node: HeteroNode, arms: ArmSet, config: RliConfig, allowed: list[int]) -> tuple[int, float]:
    """The arm whose next epoch earns the most, from the simulator's true state; (index, reward)."""
    best, best_r = allowed[0], -1e9
    current = (node.variant, node.precision, node.batch, node.cache, node.pipeline)
    for a in allowed:
        arm = arms[a]
        cmd = {"to_variant": arm.variant, "to_precision": arm.precision, "batch_size": arm.batch,
               "cache": arm.cache, "pipeline": arm.pipeline}
        r = preview_reward(node, cmd, config, (arm.variant, arm.precision, arm.batch, arm.cache, arm.pipeline)
                           != current)
        if r > best_r:
            best, best_r = a, r
    return best, best_r


def preview_reward(node: HeteroNode, cmd: dict, config: RliConfig, switched: bool) -> float:
    meter = EpochTelemetry(last_ts_ms=int(node.elapsed_s * 1000))
    for s in node.preview(cmd, int(config.epoch_s)):
        meter.add(s, config.constraints)
    return reward(meter.measurement(s["accuracy"]), config.constraints, config.weights, switched)


def simulate(name: str, specs, arms: ArmSet, config: RliConfig, seconds: int, sharing: SharingConfig | None = None,
             group_size: int = 50, ope=None) -> Run:
    """Run policy ``name`` over the fleet; ``ope`` (candidate, log list) logs decisions of an rli run."""
    run = Run(name, specs, arms, config, seconds)
    nodes, n_nodes = run.nodes, len(specs)
    allowed = [i for i, a in enumerate(arms) if a.fallback or
               arms.profile(a).accuracy >= config.constraints.min_accuracy]
    policy, agent = MorphPolicy(PolicyConfig()), RliAgent(arms, config)
    states = [NodeState.new(s.node_id) if name == "rules" else agent.new_state(s.node_id) for s in specs]
    index = {s.node_id: n for n, s in enumerate(specs)}
    sharers, network, contexts = None, None, [None] * n_nodes
    if sharing is not None:
        network = PeerNetwork([s.node_id for s in specs], group_size=group_size, ttl=sharing.ttl, seed=config.seed)
        import random
        sharers = [ExperienceSharer(s.node_id, network.group_of[s.node_id], sharing,
                                    random.Random(f"dp-{config.seed}-{s.node_id}")) for s in specs]
    pending_log = [None] * n_nodes
    e = int(config.epoch_s)
    for i in range(1, run.seconds + 1):
        for n, node in enumerate(nodes):
            sample = node.step(1.0)
            run.account(n, i, sample)
            if name == "static":
                continue
            if name == "oracle":
                if (i - 1) % e == 0:
                    a, _ = oracle_pick(node, arms, config, allowed)
                    arm = arms[a]
                    if (arm.variant, arm.precision, arm.batch, arm.cache, arm.pipeline) != \
                            (node.variant, node.precision, node.batch, node.cache, node.pipeline):
                        node.apply({"to_variant": arm.variant, "to_precision": arm.precision,
                                    "batch_size": arm.batch, "cache": arm.cache, "pipeline": arm.pipeline})
                        run.switched(n, i)
                continue
            if name == "rules":
                cmd = policy.decide(states[n], sample)
                if cmd is not None:
                    node.apply(cmd)
                    run.switched(n, i)
                continue
            d = agent.decide(states[n], sample)
            if d is None:
                continue
            contexts[n] = d.context
            if d.command is not None:
                node.apply(d.command)
                run.switched(n, i)
            if ope is not None:
                _log_decision(ope, pending_log, n, d, node, arms, config)
            if sharers is not None and d.previous_reward is not None:
                exp = sharers[n].record(d.previous_bucket, arms[d.previous_arm].name, d.previous_reward, d.ts_ms)
                for receiver, hops in (network.deliver(exp) if exp else ()):
                    r = index[receiver]
                    if contexts[r] is not None:
                        absorb(agent, states[r], exp, hops, contexts[r], sharing)
        if i % 1800 == 0:
            log(f"  {name}: {i / 3600:.1f} h simulated, mean reward so far {run.rewards[:, :(i - 2) // e].mean():.3f}")
    run.states, run.agent = states, agent
    return run


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


def decisions_to(fraction: float, run: Run, oracle: Run) -> int | None:
    """First decision (epoch) at which the fleet's smoothed mean reward reaches ``fraction`` of the oracle's."""
    mine, best = moving_mean(run.rewards.mean(axis=0)), moving_mean(oracle.rewards.mean(axis=0))
    hit = np.flatnonzero(mine[SMOOTH - 1:] >= fraction * best[SMOOTH - 1:])  # full windows only
    return int(hit[0]) + SMOOTH if len(hit) else None


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


def flow_rate(arms_from_zoo: str | None, specs, seconds: int = 400, repeats: int = 3) -> dict:
    """Telemetry events/s through the control flow on one Bytewax worker (testing source and sink, no
    Kafka), with the rules and with the agent (peers on, DP on), on the same samples.

    The two are run ``repeats`` times, alternating, and each keeps its best run, so that a burst of
    other work on the machine does not land on one of them only. Beside the wall-clock rate, the
    rate per second of this process's CPU time (steadier on a shared machine)."""
    import os

    from bytewax.testing import TestingSink, TestingSource, run_main

    from flows.control import build
    from flows.spec import FlowSpec

    if arms_from_zoo:
        os.environ["LIQUID_ZOO_DIR"] = arms_from_zoo
    arms = ArmSet.nominal()
    nodes = [HeteroNode(s, arms) for s in specs]
    items = [("Telemetry", nd.step(1.0)) for _ in range(seconds) for nd in nodes]
    out = {}
    # The simulations before leave a large heap (runs, decision logs): frozen, the garbage collector
    # does not walk it on every collection the flow triggers, as it would not in a flow process.
    gc.collect()
    gc.freeze()
    for _ in range(repeats):
        for name, options in (("rules", {}), ("rli", {"policy_kind": "rli"})):
            sink = []
            flow = build(FlowSpec("control", bootstrap="unused:9092", deterministic=True, options=options),
                         source=TestingSource(items), sink=TestingSink(sink))
            t0, c0 = time.perf_counter(), time.process_time()
            run_main(flow)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            out[name] = max(out.get(name, 0.0), len(items) / wall)
            out[f"{name}_cpu"] = max(out.get(f"{name}_cpu", 0.0), len(items) / cpu)
            out[f"{name}_commands"] = sum(1 for _, (kind, _) in sink if kind == "MorphCommand")
    gc.unfreeze()
    return out


def plot_curves(runs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name, run in runs.items():
        ax.plot(np.arange(1, run.epochs + 1), moving_mean(run.rewards.mean(axis=0)), label=name)
    ax.set_xlabel("decisions per node (10 s epochs)")
    ax.set_ylabel(f"fleet mean reward (moving mean over {SMOOTH} decisions)")
    ax.set_title("Learning curves on the same simulated fleet (measured)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Prints per-policy figures; the last stdout line is one JSON object.")
    ap.add_argument("--seed", type=int, default=0, help="node heterogeneity, sensor noise, event timing (default 0)")
    ap.add_argument("--nodes", type=int, default=16, help="simulated nodes (default 16)")
    ap.add_argument("--hours", type=float, default=2.0, help="simulated hours per policy (default 2)")
    ap.add_argument("--epsilon", type=float, default=1.0, help="DP ε per release for rli+peers+dp (default 1)")
    ap.add_argument("--dp-batch", type=int, default=5, help="rewards averaged per DP release (default 5)")
    ap.add_argument("--group-size", type=int, default=50, help="peer group size (default 50)")
    ap.add_argument("--zoo", help="zoo directory with manifest.json (default: the project's zoo)")
    ap.add_argument("--cost-metric", default="flops", help="manifest field that stands for power (default flops)")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-rli"), help="where the learning-curve PNG goes")
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
        sharing = None
        if name == "rli+peers":
            sharing = SharingConfig()
        elif name == "rli+peers+dp":
            sharing = SharingConfig(epsilon=args.epsilon, batch=args.dp_batch, budget=1e9)
        runs[name] = simulate(name, specs, arms, config, seconds, sharing, args.group_size,
                              ope=ope if name == "rli" else None)
        log(f"{name}: {time.perf_counter() - t0:.0f} s wall")
    return runs


def speedups(to: dict) -> tuple:
    """(decisions without peers, with, with DP, peer speedup, share of the speedup DP keeps)."""
    n, p, d = to["rli"], to["rli+peers"], to["rli+peers+dp"]
    speedup = n / p if n and p else None
    dp_speedup = n / d if n and d else None
    kept = (dp_speedup - 1) / (speedup - 1) if speedup and dp_speedup and speedup > 1 else None
    return n, p, d, round(speedup, 3) if speedup else None, round(kept, 3) if kept is not None else None


def print_table(args, arms_from, n_arms, runs, regret, summaries, to90, to95) -> None:
    print(f"seed {args.seed}, {args.nodes} nodes, {args.hours} h each, {n_arms} arms ({arms_from}); machine loaded")
    print(f"{'policy':14} {'regret':>9} {'reward':>7} {'maxT':>6} {'s>85':>6} {'s>90':>5} {'J/inf':>7} "
          f"{'acc':>6} {'SLO':>5} {'to90%':>6} {'to95%':>6}")
    for n in runs:
        s = summaries[n]
        print(f"{n:14} {regret[n]:9.1f} {s['mean_reward']:7.3f} {s['max_temp_c']:6.1f} {s['seconds_above_85']:6.0f} "
              f"{s['seconds_above_90']:5.0f} {s['energy_j_per_inference']:7.3f} {s['accuracy_served']:6.3f} "
              f"{s['slo_violation_epochs']:5d} {str(to90[n]):>6} {str(to95[n]):>6}")


def main() -> int:
    args = parse_args()
    arms, arms_from = load_arms(args.zoo, args.cost_metric)
    config = RliConfig(seed=args.seed)
    seconds = int(args.hours * 3600)
    log(f"{len(arms)} arms from {arms_from}; {args.nodes} nodes, {args.hours} h, seed {args.seed}")

    log("training the off-policy candidate on another fleet (seed + 1000)")
    trained = simulate("rli", fleet_specs(args.seed + 1000, max(4, args.nodes // 2), seconds), arms, config, seconds)
    candidate, candidate_stats = frozen_greedy(trained)
    ope_logs, ope_truth, records = [], [], [] if args.log_out else None
    runs = run_policies(args, arms, config, seconds, (candidate, ope_logs, ope_truth, records))

    oracle = runs["oracle"]
    regret = {n: float((oracle.rewards - r.rewards).sum()) for n, r in runs.items()}
    to90 = {n: decisions_to(0.9, r, oracle) for n, r in runs.items()}
    to95 = {n: decisions_to(0.95, r, oracle) for n, r in runs.items()}
    true_value = float(np.mean(ope_truth))
    estimates = {"ips": ips(ope_logs, candidate), "snips": snips(ope_logs, candidate),
                 "dr": doubly_robust(ope_logs, candidate), "direct": direct_method(ope_logs, candidate)}
    rate = flow_rate(args.zoo, fleet_specs(args.seed, 50, 400))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"learning-curves-seed{args.seed}.png"
    if records is not None:
        with (out / f"decisions-seed{args.seed}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        (out / f"candidate-seed{args.seed}.json").write_text(json.dumps(candidate_stats.to_dict()))
        log(f"decision log and candidate statistics in {out}")
    plot_curves(runs, png)

    summaries = {n: r.summary() for n, r in runs.items()}
    print_table(args, arms_from, len(arms), runs, regret, summaries, to90, to95)
    print(f"off-policy ({len(ope_logs)} logged decisions): true {true_value:.4f}; "
          + ", ".join(f"{k} {v:.4f}" for k, v in estimates.items()))
    print(f"control flow, 1 worker, no Kafka ({50 * 400} events, best of 3 alternating runs): agent on "
          f"{rate['rli']:.0f} events/s, rules {rate['rules']:.0f} events/s, ratio {rate['rli'] / rate['rules']:.2f}; "
          f"per CPU second: agent {rate['rli_cpu']:.0f}, rules {rate['rules_cpu']:.0f}, "
          f"ratio {rate['rli_cpu'] / rate['rules_cpu']:.2f}")
    print(f"learning curves: {png}")

    n90, p90, d90, speedup, kept = speedups(to90)
    n95, p95, d95, speedup95, kept95 = speedups(to95)
    rli, rules = summaries["rli"], summaries["rules"]
    result = {
        "seed": args.seed, "nodes": args.nodes, "hours": args.hours, "arms": len(arms),
        "regret_rli": round(regret["rli"], 2), "regret_rules": round(regret["rules"], 2),
        "regret_static": round(regret["static"], 2),
        "regret_rli_peers": round(regret["rli+peers"], 2), "regret_rli_peers_dp": round(regret["rli+peers+dp"], 2),
        "regret_ratio_rli_to_rules": round(regret["rli"] / regret["rules"], 4) if regret["rules"] else None,
        "max_temp_c_rli": rli["max_temp_c"], "max_temp_c_rules": rules["max_temp_c"],
        "seconds_above_90_rli": rli["seconds_above_90"], "seconds_above_90_rules": rules["seconds_above_90"],
        "seconds_above_85_rli": rli["seconds_above_85"], "seconds_above_85_rules": rules["seconds_above_85"],
        "decisions_to_90pct_no_peers": n90, "decisions_to_90pct_peers": p90, "decisions_to_90pct_peers_dp": d90,
        "peer_speedup": speedup, "dp_gain_retained": kept,
        "decisions_to_95pct_no_peers": n95, "decisions_to_95pct_peers": p95, "decisions_to_95pct_peers_dp": d95,
        "peer_speedup_95": speedup95, "dp_gain_retained_95": kept95,
        "ope_true_value": round(true_value, 4),
        "ope_estimates": {k: round(v, 4) for k, v in estimates.items()},
        "ope_relative_error": round(abs(estimates["dr"] - true_value) / abs(true_value), 4),
        "ope_relative_error_ips": round(abs(estimates["ips"] - true_value) / abs(true_value), 4),
        "events_per_s_agent_on": round(rate["rli"]), "events_per_s_rules": round(rate["rules"]),
        "events_per_s_ratio": round(rate["rli"] / rate["rules"], 3),
        "events_per_cpu_s_agent_on": round(rate["rli_cpu"]), "events_per_cpu_s_rules": round(rate["rules_cpu"]),
        "events_per_cpu_s_ratio": round(rate["rli_cpu"] / rate["rules_cpu"], 3),
        "events_per_s_measured_in": "control flow on 1 Bytewax worker, testing source and sink (no Kafka)",
        "summaries": summaries,
    }
    emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
