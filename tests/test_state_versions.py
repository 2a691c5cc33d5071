"""Snapshotted state checks its version on restore: older snapshots migrate, unreadable ones are refused."""

from __future__ import annotations

import copyreg
import pickle

import pytest

from morph.policy import NodeState
from operators.workflow import WorkflowState
from prediction.nextstep import NextStepPredictor
from prediction.speculation import Speculator
from schemas.state import StateVersionError


def snapshot_bytes(cls, state: dict) -> bytes:
    """The bytes Bytewax recovery holds for an instance of ``cls`` whose attributes were ``state``."""

    class Snapshot:
        def __reduce__(self):
            return copyreg._reconstructor, (cls, object, None), state

    return pickle.dumps(Snapshot())


def test_a_version_1_node_state_is_migrated_on_restore():
    current = NodeState.new("edge-1")
    current.decisions, current.variant = 7, "cnn"
    old = {k: v for k, v in vars(current).items()
           if k not in ("forecast_hits", "anomaly_hits", "fallback", "fallback_since_ms", "low_accuracy_hits",
                        "rung_rise_c", "step_down_watch")}
    old["version"] = 1
    restored = pickle.loads(snapshot_bytes(NodeState, old))
    assert restored.version == NodeState.STATE_VERSION == 4   # 1 -> 2 -> 3 -> 4, each step's fields added
    assert restored.low_accuracy_hits == 0 and restored.rung_rise_c == {} and restored.step_down_watch is None
    assert (restored.decisions, restored.variant) == (7, "cnn")
    assert (restored.forecast_hits, restored.anomaly_hits, restored.fallback, restored.fallback_since_ms) == \
        (0, 0, False, None)


@pytest.mark.parametrize("cls,make", [
    (NodeState, lambda: NodeState.new("edge-1")),
    (Speculator, lambda: Speculator("wf")),
    (WorkflowState, lambda: WorkflowState(NextStepPredictor("wf"))),
])
def test_a_snapshot_of_a_newer_release_is_refused_with_one_line_that_says_what_to_do(cls, make):
    state = make()
    assert pickle.loads(pickle.dumps(state)).version == cls.STATE_VERSION  # the current version round-trips
    newer = {**vars(state), "version": cls.STATE_VERSION + 1}
    with pytest.raises(StateVersionError) as err:
        pickle.loads(snapshot_bytes(cls, newer))
    message = str(err.value)
    assert "\n" not in message and cls.__name__ in message and "fresh recovery directory" in message


def test_a_restore_sets_every_attribute_of_a_frozen_class_and_a_slot_through_its_descriptor():
    """`Versioned.__setstate__` sets a current-version dict's attributes (frozen dataclasses included), an
    older one's after migrating it, and a slot through its descriptor. A restore that updated the instance
    dict directly would be faster, but it hides the slot and leaves the attribute names uninterned, so a
    restored state pickled again is larger than the one it came from."""
    from dataclasses import dataclass, field

    from schemas.state import Versioned

    @dataclass(frozen=True)
    class Frozen(Versioned):
        STATE_VERSION = 3   # unannotated: class attributes, not fields
        MIGRATIONS = {2: lambda s: {**s, "added": "migrated"}}
        name: str = "x"
        added: str = "new"
        items: list = field(default_factory=list)
        version: int = 3

    class Slotted(Versioned):
        __slots__ = ("count", "version")

        def __init__(self, count: int):
            self.count, self.version = count, Versioned.STATE_VERSION

    current = Frozen.__new__(Frozen)
    current.__setstate__({"name": "edge-1", "added": "kept", "items": [1, 2], "version": 3})
    assert current == Frozen("edge-1", "kept", [1, 2])
    older = Frozen.__new__(Frozen)
    older.__setstate__({"name": "edge-1", "items": [], "version": 2})   # not current: migrated as before
    assert older == Frozen("edge-1", "migrated", [])
    slotted = Slotted.__new__(Slotted)
    slotted.__setstate__({"count": 4, "version": 1})   # a dict state for a class whose attribute is a slot
    assert (slotted.count, slotted.version) == (4, 1)
    import copy

    assert copy.deepcopy(Slotted(5)).count == 5   # copy restores through __setstate__ too (a local class)
