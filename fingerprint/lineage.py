"""Data lineage: edges proven by artifacts, a task reading what another wrote in the same run.

Signals may list the artifacts a task read (``inputs``, on its start) and wrote
(``outputs``, on its finish): file names in a WfCommons instance, content digests
in the edge runtime. When an execution of ``b`` reads an artifact that an
execution of ``a`` wrote earlier in the same run, ``a -> b`` is not inferred: it
is proven. A task that names its inputs has all its data dependencies in them,
so its incoming edges come from lineage alone; tasks that name none are left to
the timing evidence (`fingerprint.handover`).

>>> from fingerprint.runs import Execution
>>> run = [Execution("align", 0, 10, inputs=("reads.fq",), outputs=("a.bam",)),
...        Execution("index", 0, 4, inputs=(), outputs=("ref.idx",)),
...        Execution("call", 12, 20, inputs=("a.bam", "ref.idx"), outputs=("a.vcf",))]
>>> sorted((run[x].task, run[y].task, artifact) for x, y, artifact in proven_pairs(run))
[('align', 'call', 'a.bam'), ('index', 'call', 'ref.idx')]
"""

from __future__ import annotations

from typing import Iterator, Sequence

from fingerprint.runs import Execution


def proven_pairs(run: Sequence[Execution]) -> Iterator[tuple[int, int, str]]:
    """(writer index, reader index, artifact) for every artifact read after it was written, same run.

    Of several writers of one artifact the reader is fed by the latest that
    finished before it started; a task reading its own output is no edge.
    """
    writers: dict[str, list[int]] = {}
    for i, ex in enumerate(run):
        for artifact in ex.outputs or ():
            writers.setdefault(artifact, []).append(i)
    if not writers:
        return
    for j, reader in enumerate(run):
        for artifact in reader.inputs or ():
            best = None
            for i in writers.get(artifact, ()):
                writer = run[i]
                done = writer.finish_ms if writer.finish_ms is not None else writer.start_ms
                if i != j and writer.task != reader.task and done <= reader.start_ms and (
                        best is None or done > _done(run[best])):
                    best = i
            if best is not None:
                yield best, j, artifact


def declares_lineage(ex: Execution) -> bool:
    """Whether the execution named what it read, so its data dependencies are known.

    An empty list does not count: a step that reads no artifact may still wait
    for another (an ordering-only dependency), which only its timing shows.
    """
    return bool(ex.inputs)


def _done(ex: Execution) -> int:
    return ex.finish_ms if ex.finish_ms is not None else ex.start_ms
