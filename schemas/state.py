"""Versioned snapshot state: the one place where a restored state's version is checked.

Bytewax recovery pickles each key's state at the end of an epoch. A state class
that derives from `Versioned` writes its ``STATE_VERSION`` into every snapshot
(the ``version`` attribute) and checks it when the snapshot is loaded: a snapshot
of an older version is migrated step by step with the class's ``MIGRATIONS``, and
one that cannot be migrated (too old, or written by a newer release) is refused
with a one-line `StateVersionError` that says what to do.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass
... class Counter(Versioned):
...     STATE_VERSION = 2
...     # version 1 had no `total`: start it at the count
...     MIGRATIONS = {1: lambda s: {**s, "total": s["count"]}}
...     count: int = 0
...     total: int = 0
...     version: int = STATE_VERSION

What unpickling a snapshot of version 1 does, and one of a newer release:

>>> restored = Counter.__new__(Counter)
>>> restored.__setstate__({"count": 3, "version": 1})
>>> restored
Counter(count=3, total=3, version=2)
>>> Counter.__new__(Counter).__setstate__({"count": 3, "total": 3, "version": 9})
Traceback (most recent call last):
...
schemas.state.StateVersionError: Counter snapshot has state version 9, this release reads 1 to 2: run the release that wrote it, or start from a fresh recovery directory
"""

from __future__ import annotations

import pickle
import random
from array import array
from typing import Any, Callable, ClassVar


class StateVersionError(RuntimeError):
    """A snapshot's state version cannot be read by this release."""


class Versioned:
    """Mixin for snapshotted state: writes ``version`` and checks it on restore.

    Subclasses set ``STATE_VERSION`` (an int, bumped when the shape changes) and,
    for each older version they can still read, ``MIGRATIONS[old] = fn`` that turns
    the attribute dict of version ``old`` into that of version ``old + 1``.
    Instances must keep the current version in their ``version`` attribute.
    """

    STATE_VERSION: ClassVar[int] = 1
    MIGRATIONS: ClassVar[dict[int, Callable[[dict], dict]]] = {}

    def __setstate__(self, state) -> None:
        slots = None
        if isinstance(state, tuple):  # (dict or None, slots dict), as pickle writes for __slots__ classes
            state, slots = state
            state = {**(state or {}), **(slots or {})}
        state = migrate_state(type(self), dict(state))
        for name, value in state.items():
            object.__setattr__(self, name, value)


def migrate_state(cls: type, state: dict) -> dict:
    """``state`` (an attribute dict) brought to ``cls.STATE_VERSION``, or `StateVersionError`."""
    current = cls.STATE_VERSION
    version = state.get("version", 1)
    oldest = min([current, *cls.MIGRATIONS])
    if not isinstance(version, int) or version > current or version < oldest:
        raise StateVersionError(
            f"{cls.__name__} snapshot has state version {version}, this release reads {oldest} to {current}: "
            "run the release that wrote it, or start from a fresh recovery directory")
    while version < current:
        state = cls.MIGRATIONS[version](state)
        version += 1
    state["version"] = current
    return state


class SnapshotRandom(random.Random):
    """A `random.Random` that snapshots cheaply: its state pickles as packed bytes.

    A Mersenne Twister's state is 625 words, which `random.Random` pickles as 625
    Python ints and restores by seeding a fresh generator from the OS first; the control
    flow's state of a node with the learned agent holds two generators, and they were a
    third of its snapshot's pickle round trip (135 of 421 µs, ~100 µs each, ~55 µs
    packed). The sequence is `random.Random`'s: same seed, same draws; a plain
    `random.Random` pickled by an older release restores as one.

    >>> import pickle
    >>> rng, plain = SnapshotRandom("edge-1"), random.Random("edge-1")
    >>> _ = rng.random(), plain.random(), rng.gauss(0, 1), plain.gauss(0, 1)   # gauss keeps a second draw
    >>> restored = pickle.loads(pickle.dumps(rng))
    >>> type(restored).__name__, [restored.gauss(0, 1), restored.random()] == [plain.gauss(0, 1), plain.random()]
    ('SnapshotRandom', True)
    """

    def __reduce__(self):
        version, internal, gauss_next = self.getstate()
        return _restore_random, (type(self), version, array("I", internal).tobytes(), gauss_next)


def _restore_random(cls: type, version: int, words: bytes, gauss_next) -> random.Random:
    rng = cls.__new__(cls, 0)  # seeded from 0, not from the OS: the state is overwritten at once
    rng.setstate((version, tuple(array("I", words)), gauss_next))
    return rng


class PickledState(bytes):
    """A key's snapshot as an operator hands it to Bytewax: its state, pickled once.

    Bytewax asks every key seen in an epoch for a snapshot at the epoch's end and pickles
    what it gets into the recovery store; bytes pickle as themselves, so the state is
    pickled once, and the snapshot is a copy that later events cannot change. A copy of
    the state object itself cost a pickle round trip, and the store then pickled it again.

    >>> snap = PickledState.of({"count": 3})
    >>> thaw(pickle.loads(pickle.dumps(snap))), thaw({"count": 3}), thaw(None)
    ({'count': 3}, {'count': 3}, None)
    """

    @classmethod
    def of(cls, state: Any) -> "PickledState":
        return cls(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self) -> Any:
        return pickle.loads(self)


def thaw(resume_state: Any) -> Any:
    """The state to resume from: a `PickledState`'s, or the state itself, as recovery stores written by
    earlier releases hold it (versions are checked as either is unpickled: `Versioned`)."""
    return resume_state.load() if isinstance(resume_state, PickledState) else resume_state
