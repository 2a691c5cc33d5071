"""Peer groups inside the control flow: experience from ``liquid.experience`` to each member node.

Experience records are keyed by their group. A `PeerGroup` state per group
remembers which nodes have shared in it (membership is learnt from the records
themselves) and forwards each new record to every other member, keyed by that
member's node id, so the morph step that holds the member's agent can absorb
it. On the topic every member hears every release: one hop, within the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from operators.events import Event
from schemas.state import Versioned


@dataclass
class PeerGroup(Versioned):
    """The members of one peer group and the experience ids already forwarded (bounded)."""

    STATE_VERSION: ClassVar[int] = 1

    members: set = field(default_factory=set)
    seen: dict = field(default_factory=dict)    # experience id -> None, insertion-ordered
    version: int = STATE_VERSION
    MAX_SEEN: ClassVar[int] = 10_000

    def forward(self, event: Event):
        """(member node id, Event) for every other member; the origin joins the group."""
        record = event.record
        origin, eid = record["origin_node"], record["experience_id"]
        self.members.add(origin)
        if eid in self.seen or record["ttl"] < 1:
            return []
        self.seen[eid] = None
        if len(self.seen) > self.MAX_SEEN:
            self.seen.pop(next(iter(self.seen)))
        hop = {**record, "ttl": record["ttl"] - 1, "hops": record["hops"] + 1}
        return [(m, Event("Experience", hop, event.topic, event.partition, event.offset))
                for m in sorted(self.members) if m != origin]


def forward_to_members(state: PeerGroup | None, event: Event):
    """The mapper for ``op.stateful_flat_map``."""
    state = state or PeerGroup()
    return state, state.forward(event)
