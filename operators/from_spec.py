"""Turning a `flows.spec.FlowSpec` into the parts a flow is wired from.

Kept out of ``flows/`` so that flows only wire, and in one place so that every
flow reads the spec the same way (codec framing, start offsets, policy).
"""

from __future__ import annotations

from dataclasses import fields, replace

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from morph.policy import MorphPolicy, PolicyConfig
from schemas.codec import Codec
from schemas.registry import codec_for as registry_codec


def codec_for(spec) -> Codec:
    """Confluent framing when a registry is configured, single-object encoding when not."""
    return registry_codec(spec.registry_url, spec.topic_names)


def source_offsets(spec) -> tuple[int, dict]:
    """(offset for partitions not named, {(topic, partition): offset})."""
    if spec.start not in ("beginning", "end"):
        raise ValueError(f"start must be 'beginning' or 'end', not {spec.start!r}")
    start = OFFSET_BEGINNING if spec.start == "beginning" else OFFSET_END
    return start, {(t, int(p)): int(o) for t, p, o in spec.start_offsets}


def policy_config_for(spec) -> PolicyConfig:
    names = {f.name for f in fields(PolicyConfig)}
    unknown = set(spec.policy) - names
    if unknown:
        raise ValueError(f"unknown policy setting(s): {', '.join(sorted(unknown))}")
    overrides = dict(spec.policy)
    if spec.zoo_dir:
        from morph.zoo import load_manifest

        manifest = load_manifest(spec.zoo_dir)
        overrides["model_sha256"] = tuple((key, e.sha256) for key, e in manifest.entries.items())
    return PolicyConfig(**overrides)


def policy_for(spec) -> MorphPolicy:
    return MorphPolicy(policy_config_for(spec))


def policy_kind(spec) -> str:
    """``rules`` (the default) or ``rli`` (the learned agent), from ``--policy rules|rli``."""
    kind = spec.options.get("policy_kind", "rules")
    if kind not in ("rules", "rli"):
        raise ValueError(f"unknown policy {kind!r}: rules or rli")
    return kind


def agent_for(spec):
    """The learned morph agent of ``--policy rli`` (its arms from the zoo manifest), or None."""
    if policy_kind(spec) != "rli":
        return None
    from morph.agent import RliAgent, RliConfig
    from morph.arms import ArmSet
    from morph.zoo.manifest import ZooMissingError, default_zoo_dir, load_manifest

    try:
        arms = ArmSet.from_manifest(load_manifest(spec.zoo_dir or default_zoo_dir()))
    except ZooMissingError:
        if spec.zoo_dir:
            raise
        arms = ArmSet.nominal()  # no zoo built here: the thermal model's nominal figures
    return RliAgent(arms, RliConfig(constraints=constraints_for(spec), seed=int(spec.options.get("rli_seed", 0)),
                                      epoch_s=float(spec.options.get("rli_epoch_s") or RliConfig.epoch_s)))


def constraints_for(spec):
    """The workflow's constraints (an AdaptiveWorkflow's ``spec.constraints``) as the agent takes them."""
    from morph.reward import WorkflowConstraints

    given = spec.options.get("constraints") or {}
    names = {"max_latency_ms": "max_latency_ms", "min_accuracy": "min_accuracy",
             "max_gpu_temp_celsius": "max_gpu_temp_c", "max_power_watts": "max_power_w"}
    constraints = WorkflowConstraints(**{names[k]: float(v) for k, v in given.items() if k in names})
    if "max_gpu_temp_celsius" in given:  # the critical jump sits 5 degC above, as for the rules
        constraints = replace(constraints, critical_temp_c=constraints.max_gpu_temp_c + 5.0)
    return constraints


def sharer_factory_for(spec, agent=None):
    """``node_id -> ExperienceSharer`` when the agent shares experience with its peer group, else None.

    Nodes fall into ``options.peer_groups`` groups by a hash of their id
    (default one group); ``options.dp_epsilon`` is the ε per release, and
    ``options.no_dp`` (``--no-dp``) shares without differential privacy. Under
    DP, rewards are clipped to ``agent``'s reward range (`morph.peers.reward_clip`:
    sensitivity 0.5), or to [0, 1] without an agent."""
    if policy_kind(spec) != "rli" or spec.options.get("no_peers"):
        return None
    import zlib

    from morph.peers import DP_WINDOW, ExperienceSharer, SharingConfig, reward_clip
    from schemas.state import SnapshotRandom

    groups = max(1, int(spec.options.get("peer_groups", 1)))
    epsilon = None if spec.options.get("no_dp") else float(spec.options.get("dp_epsilon", 1.0))
    config = SharingConfig(epsilon=epsilon, window=DP_WINDOW if epsilon is not None else 1,
                           clip=reward_clip(agent.config, agent.arms) if agent is not None else SharingConfig.clip)

    def sharer(node_id: str) -> ExperienceSharer:
        group = f"g{zlib.crc32(node_id.encode()) % groups}"
        # DP noise must not be predictable from the node id: seed from the OS
        return ExperienceSharer(node_id, group, config, SnapshotRandom())
    return sharer


def signer_for(spec):
    """The command signer of ``options.signing_key`` (a PEM file; `liquid keys generate`), or None."""
    path = spec.options.get("signing_key")
    if not path:
        return None
    from edge.signing import CommandSigner

    return CommandSigner.from_file(path, ttl_s=float(spec.options.get("command_ttl_s", 60.0)))


def models_factory_for(spec):
    """Per-node online models for the control flow, or None when they are off."""
    if not spec.models:
        return None
    from functools import partial

    from prediction.telemetry_models import TelemetryModels

    # The policy reads the temperature forecast only: power and latency forecasters would cost
    # per sample for nothing the flow emits.
    return partial(TelemetryModels.for_node, horizon_s=policy_config_for(spec).forecast_horizon_s,
                   forecasts=("gpu_temp_c",))



def predictor_factory_for(spec):
    """``workflow_id -> NextStepPredictor`` as the flow and ``liquid evaluate next-step`` build it.

    ``options.idle_timeout_ms`` closes runs idle that long (event time); off by
    default, as in the offline evaluation, so both give the same figures. State
    stays bounded either way: a fingerprint keeps at most 10,000 open runs.
    ``options.metrics_interval_ms`` is how often (event time) each workflow's
    running metrics are published (default one minute).
    """
    from functools import partial

    from fingerprint.temporal import Fingerprint
    from prediction.nextstep import NextStepPredictor

    interval = int(spec.options.get("metrics_interval_ms", 60_000))
    idle = spec.options.get("idle_timeout_ms")
    if not idle:
        return partial(NextStepPredictor, metrics_interval_ms=interval)
    return lambda wf: NextStepPredictor(wf, fingerprint=Fingerprint(wf, idle_timeout_ms=int(idle)),
                                        metrics_interval_ms=interval)


def speculation_factory_for(spec):
    """``(workflow_id, predictor) -> Speculator`` when the workflow flow speculates, else None."""
    if not spec.options.get("speculation"):
        return None
    from prediction.speculation import Speculator

    return lambda workflow_id, predictor: Speculator(workflow_id, predictor=predictor)
