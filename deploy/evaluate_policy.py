"""``liquid evaluate policy``: a candidate morph policy's value, estimated from logged RLI decisions.

Only wiring: the log lines are `morph.ope.log_record` records (JSON lines),
the estimators are `morph.ope`'s, the arm set comes from the zoo manifest as
the agent builds it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DESCRIPTION = """\
Replay logged decisions of the learned morph agent (each: the node's context,
the arms its shield allowed, the arm chosen, the probability it was chosen
with, and the reward measured from the telemetry that followed) and estimate
the mean reward a candidate policy would have earned on the same contexts:

  ips      inverse propensity scoring: mean of 1[candidate = logged arm] r / p
  snips    the same, self-normalised
  dr       doubly robust: a ridge reward model's prediction for the candidate's
           arm, corrected by the importance-weighted residual (cross-fitted)
  direct   the reward model alone

Candidates (--candidate):
  arm:NAME        always that arm (e.g. arm:cnn/fp16/b8) where the shield allowed
                  it, otherwise the fallback
  lightest-safe   the allowed arm with the lowest cost
  heaviest-safe   the allowed arm with the highest cost
  greedy:FILE     greedy on bandit statistics saved as JSON
                  ({"gram": [[...]], "moment": [...], "count": n})

The estimates are only as good as the overlap: an arm the logging policy never
chose is judged by the reward model alone ("matches" says how many logged
decisions chose what the candidate would have).
"""


def register(tree) -> None:
    p = tree.command("evaluate policy", help="off-policy value of a candidate morph policy from logged decisions",
                     description=DESCRIPTION, handler=run)
    p.add_argument("--log", required=True, metavar="FILE.jsonl", help="decision log, one JSON record per line")
    p.add_argument("--candidate", required=True, action="append", metavar="SPEC",
                   help="candidate policy (repeatable): arm:NAME, lightest-safe, heaviest-safe, greedy:FILE")
    p.add_argument("--zoo", help="zoo directory (default: the project's zoo; nominal figures when none is built)")
    p.add_argument("--ridge", type=float, default=1.0, help="ridge of the reward model and of greedy:FILE (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")


def candidate_policy(spec: str, arms, ridge: float):
    """A function LoggedDecision -> arm index for a --candidate spec."""
    import numpy as np

    from deploy.errors import UsageError

    costs = np.array([arms.profile(a).cost for a in arms])
    fallback = arms.index(arms.fallback)
    if spec.startswith("arm:"):
        name = spec[4:]
        index = {a.name: i for i, a in enumerate(arms)}
        if name not in index:
            raise UsageError(f"no arm {name!r} in the arm set; e.g. {arms[0].name}, {arms.fallback.name}")
        target = index[name]
        return lambda d: target if d.safe[target] else fallback
    if spec in ("lightest-safe", "heaviest-safe"):
        sign = 1.0 if spec == "lightest-safe" else -1.0

        def by_cost(d):
            allowed = np.flatnonzero(d.safe)
            return int(allowed[int(np.argmin(sign * costs[allowed]))])
        return by_cost
    if spec.startswith("greedy:"):
        path = Path(spec[7:])
        try:
            stats = json.loads(path.read_text())
            gram, moment = np.asarray(stats["gram"], float), np.asarray(stats["moment"], float)
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f"cannot read bandit statistics from {path}: {err}") from None
        theta = np.linalg.solve(gram + ridge * np.eye(len(moment)), moment)

        def greedy(d):
            allowed = np.flatnonzero(d.safe)
            return int(allowed[int(np.argmax(d.phi[allowed] @ theta))])
        return greedy
    raise UsageError(f"unknown candidate {spec!r}: use arm:NAME, lightest-safe, heaviest-safe or greedy:FILE")


def read_log(path: Path, featurizer):
    from deploy.errors import UsageError
    from morph.ope import from_log_record

    if not path.is_file():
        raise UsageError(f"no such decision log: {path}")
    index = {a.name: i for i, a in enumerate(featurizer.arms)}
    logs = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                logs.append(from_log_record(record, featurizer, index))
            except KeyError as err:
                raise UsageError(f"{path}:{n}: unknown arm or missing field {err} "
                                 "(was the log written with another zoo? pass --zoo)") from None
            except (ValueError, TypeError) as err:
                raise UsageError(f"{path}:{n}: not a decision record ({err})") from None
    if not logs:
        raise UsageError(f"{path} holds no decisions")
    return logs


def run(args) -> int:
    import numpy as np

    from morph.arms import ArmSet
    from morph.context import Featurizer
    from morph.ope import direct_method, doubly_robust, ips, snips
    from morph.zoo.manifest import ZooMissingError, default_zoo_dir, load_manifest

    try:
        arms = ArmSet.from_manifest(load_manifest(args.zoo or default_zoo_dir()))
    except ZooMissingError:
        arms = ArmSet.nominal()
    logs = read_log(Path(args.log), Featurizer(arms))
    logged_value = float(np.mean([d.reward for d in logs]))
    report = {"decisions": len(logs), "logged_policy_value": round(logged_value, 4), "candidates": {}}
    for spec in args.candidate:
        policy = candidate_policy(spec, arms, args.ridge)
        matches = sum(policy(d) == d.arm for d in logs)
        report["candidates"][spec] = {
            "matches": int(matches), "ips": round(ips(logs, policy), 4), "snips": round(snips(logs, policy), 4),
            "dr": round(doubly_robust(logs, policy, args.ridge), 4),
            "direct": round(direct_method(logs, policy, args.ridge), 4)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{len(logs)} logged decisions; the logging policy earned {logged_value:.4f} per decision")
    for spec, est in report["candidates"].items():
        print(f"{spec}: dr {est['dr']:.4f}  ips {est['ips']:.4f}  snips {est['snips']:.4f}  "
              f"direct {est['direct']:.4f}  ({est['matches']} matching decisions)", file=sys.stdout)
    return 0
