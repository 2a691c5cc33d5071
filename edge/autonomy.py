"""Local safety: the node runs the control plane's own `MorphPolicy` when the control plane is silent.

The morph policy is plain Python so that a node can run it too. `LocalSafety`
feeds every telemetry sample of a node to a local copy of the policy, always,
so its window is warm when it is needed. While the link is up the control
plane decides: a local decision is dropped and the local state goes back to
believing the node's telemetry. When nothing has come back from the cluster
for ``silent_after_s`` (no command received, no record acknowledged by the
broker), the local decision is returned for the worker to apply; the worker
acknowledges it with origin ``local`` through its outbox, so the control plane
learns of it, and adopts it, once the link returns.

What "silent" cannot see: a control flow that has stopped while the broker
still answers. The broker's acknowledgements keep the node believing the link
is up; a heartbeat from the control flow would be needed to tell the two apart.

>>> from morph.policy import PolicyConfig
>>> clock = [0.0]
>>> safety = LocalSafety(PolicyConfig(window=3, sustain_fraction=0.6, cooldown_s=0), silent_after_s=5,
...                      clock=lambda: clock[0])
>>> sample = dict(node_id="n1", gpu_temp_c=86.0, mem_used_frac=0.4, power_w=200.0, power_cap_w=300.0,
...               variant="transformer", precision="fp32", batch_size=16)
>>> [safety.observe({**sample, "ts_ms": i * 1000}) for i in range(3)]   # link up: the control plane decides
[None, None, None]
>>> clock[0] = 10.0                                                      # nothing back for 10 s
>>> cmd = safety.observe({**sample, "ts_ms": 10_000})
>>> cmd["to_variant"], cmd["command_id"].startswith("n1-local-")
('lstm', True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from morph.policy import MorphPolicy, NodeState, PolicyConfig


@dataclass
class LocalSafety:
    """A node-side `MorphPolicy` that acts only while the control plane is silent.

    Parameters
    ----------
    config
        The policy's configuration: the same rules as the control flow's (85 °C / 90 °C).
    silent_after_s
        Seconds without any contact with the cluster after which the node decides itself.
    clock
        Monotonic seconds (``time.monotonic``); tests pass their own.
    """

    config: PolicyConfig = PolicyConfig()
    silent_after_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    boot: str = field(default_factory=lambda: format(int(time.time() * 1000), "x"))
    states: dict = field(default_factory=dict)
    last_contact: float = field(default=None)
    decisions: int = 0

    def __post_init__(self):
        self.policy = MorphPolicy(self.config)
        if self.last_contact is None:
            self.last_contact = self.clock()

    def contact(self) -> None:
        """Something came back from the cluster: a command, or the broker acknowledged a record."""
        self.last_contact = self.clock()

    def silent(self) -> bool:
        return self.clock() - self.last_contact >= self.silent_after_s

    def observe(self, sample: dict) -> dict | None:
        """Feed one telemetry sample; a MorphCommand to apply locally, or None."""
        node_id = sample["node_id"]
        state = self.states.get(node_id)
        if state is None:
            state = self.states[node_id] = NodeState.new(node_id)
        command = self.policy.decide(state, sample)
        if command is None:
            return None
        if not self.silent():
            state.pending = None  # the control plane is in charge: believe the node's telemetry again
            return None
        self.decisions += 1
        # Ids of their own: a local decision never collides with a control-plane command id.
        command["command_id"] = f"{node_id}-local-{self.boot}-{self.decisions}"
        command["reason"] = f"local (control plane silent {self.clock() - self.last_contact:.0f} s): " \
                            + command["reason"]
        return command

    def on_ack(self, ack: dict) -> None:
        """What the node applied (or not) for a local decision."""
        state = self.states.get(ack["node_id"])
        if state is not None:
            self.policy.on_ack(state, ack)
