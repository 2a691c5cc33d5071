"""Node loss for real: a `liquid worker` killed with SIGKILL mid-run; another worker resumes its run from the broker."""

from __future__ import annotations

import os
import signal
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas import TopicNames
from schemas.codec import Codec
from tests.conftest import start_liquid

pytestmark = pytest.mark.broker
TOPICS = TopicNames()


class TopicReader:
    """Every record of a topic from the beginning, decoded; ``poll`` adds what arrived."""

    def __init__(self, kafka, topic: str):
        self.codec, self.records = Codec(), []
        self.consumer = Consumer(kafka.consumer("test-node-loss"))
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def poll(self, seconds: float = 0.2) -> list[dict]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.05)
            if msg is not None and msg.error() is None:
                self.records.append(self.codec.decode(msg.value()).record)
        return self.records


def wait_until(reader: TopicReader, check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check(reader.poll())
        if found:
            return found
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_workers_run_resumes_on_another_node_from_its_last_committed_step(kafka, zoo, tmp_path):
    # I/O costs x20: a run takes ~2 s, so the kill lands inside one
    common = ("--workflow", "inspection", "--takeover-after", "3", "--workflow-cost-scale", "20", "--rate", "5",
              "--interval", "0.5", "--zoo", zoo.root, "--bootstrap", kafka.bootstrap, "--silent-after", "0")
    lost = start_liquid("worker", "--node", "edge-1", "--outbox", tmp_path / "a.db", *common, log=tmp_path / "a.log")
    survivor = start_liquid("worker", "--node", "edge-2", "--outbox", tmp_path / "b.db", *common,
                            log=tmp_path / "b.log")
    checkpoints = TopicReader(kafka, TOPICS.checkpoints)
    try:
        # edge-1 finishes a run, then is killed once the next one has committed its preprocess step
        def in_flight(records):
            ended = {r["run_id"] for r in records if r["status"] == "ENDED"}
            mine = [r for r in records if r["node_id"] == "edge-1"]
            if not any(r["run_id"] in ended for r in mine):
                return None
            return next((r["run_id"] for r in mine if r["step"] == "preprocess" and r["run_id"] not in ended), None)
        victim = wait_until(checkpoints, in_flight, 120, "edge-1 to commit preprocess of a second run")
        os.kill(lost.pid, signal.SIGKILL)
        lost.wait(10)
        committed = [r["step"] for r in checkpoints.poll(0.5) if r["run_id"] == victim and r["status"] == "COMMITTED"]
        assert committed[:2] == ["ingest", "preprocess"]

        def resumed(records):
            ends = [r for r in records if r["run_id"] == victim and r["status"] == "ENDED"]
            return ends or None
        ends = wait_until(checkpoints, resumed, 60, f"run {victim} to end on another node")
        assert [(r["node_id"], r["error"]) for r in ends] == [("edge-2", None)]
        on_survivor = [r for r in checkpoints.records if r["run_id"] == victim and r["node_id"] == "edge-2"]
        redone = [r["step"] for r in on_survivor if r["status"] == "COMMITTED"]
        # from the last committed step: nothing committed on edge-1 runs again, the rest runs once
        assert redone and not set(redone) & set(committed)
        assert redone[-1] == "output" and on_survivor[0]["status"] == "STARTED" and not on_survivor[0]["artifacts"]
        # the survivor's signals for the run: only the steps it had left, each started once
        signals = TopicReader(kafka, TOPICS.signals)
        started = wait_until(signals, lambda rs: [s["task"] for s in rs if s["run_id"] == victim
                                                  and s["node_id"] == "edge-2" and s["state"] == 1] or None,
                             30, "the survivor's signals of the resumed run")
        assert started == redone and "resuming run " + victim in (tmp_path / "b.log").read_text()
    finally:
        for proc in (lost, survivor):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        checkpoints.consumer.close()
