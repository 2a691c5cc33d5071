"""Recovery end to end: failed signals -> broker -> workflow flow (graph + agent) -> workflow.policy -> a worker."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
from confluent_kafka import Producer

from edge.faults import DEPENDENCY_UNAVAILABLE, Failure, StepFailure
from edge.runtime import Alternative, Step, WorkflowRun, WorkflowSpec
from edge.worker import PolicyListener
from prediction.recovery import FailureView, PolicyRecovery, RecoveryPolicyTable
from schemas import TopicNames
from schemas.codec import Codec
from tests.conftest import ROOT, liquid_cmd

pytestmark = pytest.mark.broker
TOPICS = TopicNames()


def unavailable(ctx):
    raise StepFailure(DEPENDENCY_UNAVAILABLE, "the database does not answer")


def test_failed_signals_reach_the_graph_and_the_published_policy_reaches_a_worker(kafka):
    codec, producer = Codec(), Producer(kafka.producer(**{"linger.ms": "0"}))
    spec = WorkflowSpec("orders", (
        Step("load", unavailable, inputs=("x",), outputs=("y",),
             alternatives=(Alternative("cached", lambda ctx: {"y": ctx.inputs["x"]}),)),
        Step("save", lambda ctx: {"z": ctx.inputs["y"]}, inputs=("y",), outputs=("z",))))
    node = PolicyRecovery(FailureView(), explore=1.0, seed=3)  # tries every action, so the agent sees them all
    clock = {"t": 1_800_000_000.0}

    def publish(signal):
        node.view.graph.learn_one(signal)
        producer.produce(TOPICS.signals, key=b"orders", value=codec.encode("WorkflowSignal", signal))

    for k in range(40):
        clock["t"] += 60
        WorkflowRun(spec, f"r{k}", "edge-1", recovery=node, on_signal=publish, clock=lambda: clock["t"],
                    wait=lambda s: clock.__setitem__("t", clock["t"] + s)).execute({"x": np.arange(3)})
    producer.flush(10)

    done = subprocess.run(liquid_cmd("flow", "run", "workflow", "--resilience", "--until-end", "--bootstrap",
                                     kafka.bootstrap), check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]

    received: list[dict] = []
    listener = PolicyListener(kafka, TOPICS.policy, None, set(), received.append, codec, from_beginning=True)
    listener.start()
    listener.wait_ready()
    deadline = time.monotonic() + 20
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    listener.stop()
    assert received, "no recovery policy was published"
    latest = max(received, key=lambda r: r["version"])
    assert latest["workflow_id"] == "orders" and latest["version"] == len(received) >= 1
    assert set(latest["parents"]) == {"orders/load", "orders/save"}
    worker = PolicyRecovery(FailureView())
    worker.apply(RecoveryPolicyTable.from_record(latest))
    d = worker.decide(Failure("orders", "rX", "load", "edge-1", DEPENDENCY_UNAVAILABLE, 1, clock["t"],
                              alternatives=("cached",)))
    assert d.policy_version == latest["version"]
    # once the step fails often (rate bucket 2), the alternative, the only action that ever helped, is the policy
    assert latest["actions"]["a-i|DEPENDENCY_UNAVAILABLE|1|2|0|1|0|0"] == "ALTERNATIVE"
