"""What a WorkflowSignal is to the fingerprint: constants, and the check that sorts out bad ones.

Records are plain dicts with the fields of ``schemas/workflow_signal.avsc``.
`signal_problem` is the one cheap gate every signal passes before it touches
state; it answers ``None`` for a usable signal or the issue kind that names why
not, so callers count issues per kind instead of raising.

>>> good = {"signal_id": "s1", "workflow_id": "w", "run_id": "r", "task": "a",
...         "state": STARTED, "ts_ms": 1000}
>>> signal_problem(good) is None
True
>>> signal_problem({**good, "state": 7})
'malformed'
>>> signal_problem({**good, "ts_ms": "yesterday"})
'malformed'
>>> signal_problem("not a dict")
'malformed'
"""

from __future__ import annotations

import sys

#: ``state`` of a signal: the task went 0 -> 1.
STARTED = 1
#: ``state`` of a signal: the task went 1 -> 0.
FINISHED = 0
#: The pseudo-task that stands for "the run ends here" in every next-step distribution.
END = "<end>"
#: The pseudo-task a run's history starts from (the context of its first task).
START = "<start>"

#: Every kind of bad signal the fingerprint counts, and what it does with it.
ISSUE_KINDS = {
    "malformed": "a required field is missing or of the wrong type; dropped",
    "duplicate": "signal_id seen before (at-least-once redelivery); dropped",
    "unknown_workflow": "signal of another workflow than the fingerprint's; dropped",
    "finish_without_start": "finish of a task the run never started; dropped, but run_ended still closes the run",
    "out_of_order": "older than the latest signal of its run; kept (the DAG orders by timestamp)",
    "negative_duration": "finish earlier than its start; dropped",
    "after_run_end": "signal for a run already closed; dropped",
    "abandoned_run": "open run evicted (idle too long or too many open runs); closed as incomplete",
}

def signal_problem(signal) -> str | None:
    """``None`` if ``signal`` is usable, else ``"malformed"``.

    Only the fields the fingerprint relies on are checked, so the gate stays a
    few hundred nanoseconds; optional fields are checked where they are read.
    """
    try:
        if (type(signal["signal_id"]) is str and type(signal["workflow_id"]) is str
                and type(signal["run_id"]) is str and type(signal["task"]) is str
                and type(signal["ts_ms"]) is int and signal["state"] in (STARTED, FINISHED)):
            return None
    except (KeyError, TypeError, IndexError):
        pass
    return "malformed"


def optional_bytes(value) -> int | None:
    """``data_size_bytes`` if it is a non-negative int, else ``None`` (bad sizes are ignored, not fatal)."""
    return value if type(value) is int and value >= 0 else None


def optional_resources(value) -> dict[str, float] | None:
    """``resources`` keeping only numeric entries; ``None`` when nothing usable is left."""
    if not isinstance(value, dict):
        return None
    kept = {k: float(v) for k, v in value.items()
            if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return kept or None


def optional_attributes(value) -> dict[str, str] | None:
    """``attributes`` keeping only string names and values; ``None`` when absent or nothing usable is left.

    >>> optional_attributes({"org:group": "ops", "n": 3}), optional_attributes(7)
    ({'org:group': 'ops'}, None)
    """
    if not isinstance(value, dict):
        return None
    kept = {k: v for k, v in value.items() if type(k) is str and type(v) is str}
    return kept or None


def optional_artifacts(value) -> tuple[str, ...] | None:
    """``inputs``/``outputs`` lineage as a tuple of artifact names; ``None`` when absent or unusable.

    Names are interned: the same artifact named by its writer and its readers,
    run after run, is then one string in memory.

    >>> optional_artifacts(["a.bam", "a.bai"]), optional_artifacts(None), optional_artifacts(["ok", 3])
    (('a.bam', 'a.bai'), None, None)
    """
    if type(value) is not list or not all(type(a) is str for a in value):
        return None
    return tuple(sys.intern(a) for a in value)
