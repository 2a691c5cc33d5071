"""Peer groups inside the control flow: experience from ``liquid.experience`` to each member node.

Experience records are keyed by their group. A `PeerGroup` state per group
remembers which nodes have shared in it (membership is learnt from the records
themselves) and forwards each new record to every other member, keyed by that
member's node id, so the morph step that holds the member's agent can absorb
it. On the topic every member hears every release: one hop, within the TTL.
A node that joins (its first record) is also sent the group's archive of recent
releases (`morph.peers.GroupArchive`), so it starts from its peers' experience
rather than only what is released after it joined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from morph.peers import GroupArchive
from operators.events import Event
from schemas.state import Versioned


@dataclass
class PeerGroup(Versioned):
    """The members of one peer group, the experience ids already forwarded (bounded), its archive."""

    STATE_VERSION: ClassVar[int] = 2
    # version 1 kept no archive: a restored group starts an empty one
    MIGRATIONS: ClassVar[dict] = {1: lambda s: {**s, "archive": GroupArchive()}}

    members: set = field(default_factory=set)
    seen: dict = field(default_factory=dict)    # experience id -> None, insertion-ordered
    archive: GroupArchive = field(default_factory=GroupArchive)
    version: int = STATE_VERSION
    MAX_SEEN: ClassVar[int] = 10_000

    def forward(self, event: Event):
        """(member node id, Event) for every other member, and the archive for a node that just joined."""
        record = event.record
        origin, eid = record["origin_node"], record["experience_id"]
        out = []
        if origin not in self.members:
            self.members.add(origin)
            out = [(origin, _hop(past, event)) for past in self.archive.records() if past["origin_node"] != origin]
        if eid in self.seen or record["ttl"] < 1:
            return out
        self.seen[eid] = None
        if len(self.seen) > self.MAX_SEEN:
            self.seen.pop(next(iter(self.seen)))
        self.archive.add(record)
        hop = _hop(record, event)   # one for all members: a receiver only reads it
        return out + [(m, hop) for m in sorted(self.members) if m != origin]


def _hop(record: dict, event: Event) -> Event:
    """``record`` one hop further, as an Event at the position of ``event`` on the topic."""
    hop = {**record, "ttl": record["ttl"] - 1, "hops": record["hops"] + 1}
    return Event("Experience", hop, event.topic, event.partition, event.offset)


def forward_to_members(state: PeerGroup | None, event: Event):
    """The mapper for ``op.stateful_flat_map``."""
    state = state or PeerGroup()
    return state, state.forward(event)
