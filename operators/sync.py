"""The sync flow's step: a batch of nodes' execution records into the central store, answers out.

`CentralSync` is the mapper of a ``flat_map_batch``: each Bytewax source batch
of ``(node id, Event)`` ExecutionRecords is applied to the central store
(`fingerprint.store.CentralExecutions`, SQLite or PostgreSQL) in one
transaction, and each result that has something to tell its node becomes a
signed ``SyncOutcome`` keyed by node. The store is opened once per worker
thread. Redelivered records (a resume from a recovery snapshot re-reads what
came after it) are duplicates for the store, which repeats their answers.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter

from fingerprint.store import CentralExecutions

SYNC_RECORDS = Counter("liquid_sync_records", "Execution records applied to the central store, by result", ["result"])


def strategies_of(options: dict) -> tuple[dict[str, str], str]:
    """``({entity type: strategy}, default)`` from a FlowSpec's ``conflicts`` option (``{"default": ..., ...}``)."""
    conflicts = dict(options.get("conflicts") or {})
    return conflicts, conflicts.pop("default", "last_modified")


class CentralSync:
    """``[(node id, Event)] -> [(node id, ("SyncOutcome", record))]`` for ``op.flat_map_batch``.

    Parameters
    ----------
    target
        The central store: a SQLite file or a PostgreSQL DSN.
    strategies, default
        Conflict strategy per entity type, and for the others.
    signer
        An `edge.signing.CommandSigner`: answers leave signed (nodes with a keyring refuse unsigned ones).
    """

    def __init__(self, target: str, strategies: dict[str, str] | None = None, default: str = "last_modified",
                 signer=None):
        self.target, self.strategies, self.default, self.signer = target, dict(strategies or {}), default, signer
        CentralExecutions(":memory:", self.strategies, default).close()  # a bad strategy fails at build time
        self._local = threading.local()
        self._counters = {}

    def store(self) -> CentralExecutions:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = CentralExecutions(self.target, self.strategies, self.default)
        return store

    def __call__(self, batch: list) -> list:
        results = self.store().apply_many([event.record for _, event in batch])
        out = []
        for result in results:
            counter = self._counters.get(result.kind)
            if counter is None:
                counter = self._counters[result.kind] = SYNC_RECORDS.labels(result.kind)
            counter.inc()
            if result.outcome is not None:
                outcome = self.signer.sign(result.outcome) if self.signer else result.outcome
                out.append((outcome["node_id"], ("SyncOutcome", outcome)))
        return out


def central_sync_for(spec) -> CentralSync:
    """The step of ``liquid flow run sync``: ``--store`` (required), ``--conflict``, ``--signing-key``."""
    target = spec.options.get("store")
    if not target:
        raise ValueError("the sync flow needs --store PATH|DSN (the central store)")
    signer = None
    if spec.options.get("signing_key"):
        from edge.signing import CommandSigner

        # Answers wait in the topic while a node is cut off: they live as long as the outbox keeps records.
        signer = CommandSigner.from_file(spec.options["signing_key"],
                                         ttl_s=float(spec.options.get("outcome_ttl_s", 7200.0)))
    strategies, default = strategies_of(spec.options)
    return CentralSync(target, strategies, default, signer)
