"""Turning a `flows.spec.FlowSpec` into the parts a flow is wired from.

Kept out of ``flows/`` so that flows only wire, and in one place so that every
flow reads the spec the same way (codec framing, start offsets, policy).
"""

from __future__ import annotations

from dataclasses import fields

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from morph.policy import MorphPolicy, PolicyConfig
from schemas.codec import Codec


def codec_for(spec) -> Codec:
    """Confluent framing when a registry is configured, single-object encoding when not."""
    if spec.registry_url:
        from schemas.registry import RegistrySchemaIds

        return Codec(RegistrySchemaIds(spec.registry_url, spec.topic_names))
    return Codec()


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


def models_factory_for(spec):
    """Per-node online models for the control flow, or None when they are off."""
    if not spec.models:
        return None
    from functools import partial

    from prediction.telemetry_models import TelemetryModels

    return partial(TelemetryModels.for_node, horizon_s=policy_config_for(spec).forecast_horizon_s)



def predictor_factory_for(spec):
    """``workflow_id -> NextStepPredictor`` as the flow and ``liquid evaluate next-step`` build it.

    ``options.idle_timeout_ms`` closes runs idle that long (event time); off by
    default, as in the offline evaluation, so both give the same figures. State
    stays bounded either way: a fingerprint keeps at most 10,000 open runs.
    """
    from fingerprint.temporal import Fingerprint
    from prediction.nextstep import NextStepPredictor

    idle = spec.options.get("idle_timeout_ms")
    if not idle:
        return NextStepPredictor
    return lambda wf: NextStepPredictor(wf, fingerprint=Fingerprint(wf, idle_timeout_ms=int(idle)))


def speculation_factory_for(spec):
    """``(workflow_id, predictor) -> Speculator`` when the workflow flow speculates, else None."""
    if not spec.options.get("speculation"):
        return None
    from prediction.speculation import Speculator

    return lambda workflow_id, predictor: Speculator(workflow_id, predictor=predictor)
