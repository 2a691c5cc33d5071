"""The edge worker: inference nodes that apply morph commands while serving.

Each node serves a steady request stream (`edge.serving.RequestLoad`) on an
ONNX Runtime session (`edge.serving.InferenceServer`). Commands for the
worker's nodes arrive on the commands topic; each is checked (known variant and
precision, the manifest's sha256, the command's sha256) and applied by loading
and warming the new session off the serving thread, then swapping it in
atomically. Requests keep flowing on the old session until then; a rejected or
failed swap leaves it serving. Every command is acknowledged (CommandAck), and
every node publishes Telemetry once per ``--interval``: resource readings from
NVML or the thermal model, serving figures as measured.

Everything the worker publishes goes through its durable outbox
(`edge.outbox.Outbox`, SQLite): it survives broker outages and worker restarts
and is drained in order once the broker is back, each record with an id for
consumers to deduplicate. With a keyring, every command must be signed
(`edge.signing`); a rejected one is acknowledged with the reason. When the
control plane is silent, the node's own policy keeps it safe (`edge.autonomy`).
With ``takeover_after_s`` (``--takeover-after``), workflow runs publish their
committed steps and the worker resumes the runs of nodes silent that long
(`edge.takeover`), and a recovery policy may move a run to another node
(`edge.faults.MIGRATE`): the node releases it and another resumes it.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Producer

from edge.autonomy import LocalSafety
from edge.inspection import InspectionCosts, PipelineMode, ServedClassifier, inspection_lots, inspection_workflow
from edge.listener import EDGE_FETCH_WAIT_MS, CommandListener
from edge.outbox import PRIORITY_OF_SCHEMA, Outbox, idempotent_producer_config
from edge.records import ExecutionStore
from edge.runtime import WorkflowRun
from edge.sensors import open_sensor
from edge.serving import APPLIED, InferenceServer, RequestLoad
from edge.shadow import ShadowExecutor
from edge.signing import CommandVerifier
from edge.sync import SyncManager, SyncOutcomeListener, TopicPosition
from edge.takeover import COMMITTED, ENDED, RELEASED, STARTED, Takeover, checkpoint_record
from edge.thermal import Scenario
from morph.policy import PolicyConfig
from morph.zoo import load_manifest
from morph.zoo.data import DriftingFrames
from morph.zoo.lighting import PREPROCESSING
from prediction.recovery import FailureView, PolicyRecovery, RecoveryPolicyTable
from schemas.codec import Codec, DecodeError


@dataclass
class EdgeNode:
    node_id: str
    server: object            # edge.serving.InferenceServer
    load: object              # edge.serving.RequestLoad
    sensor: object            # edge.sensors.Sensor
    batch_size: int = 16
    seq: int = 0
    applied: list = field(default_factory=list)   # (command, ack) of every handled command
    executor: object = None   # edge.shadow.ShadowExecutor, when the node runs workflows
    sync: object = None       # edge.sync.SyncManager of its execution store, when it runs workflows
    pipeline: PipelineMode = field(default_factory=PipelineMode)  # optional inspection stages, set by commands
    runs: list = field(default_factory=list)      # edge.runtime.RunResult of every finished run
    recovery: object = None   # prediction.recovery.PolicyRecovery: the latest published policy, or the static retrier
    spec: object = None       # the workflow it runs (edge.runtime.WorkflowSpec)


class RecordListener(CommandListener):
    """Every record of a topic, decoded as ``schema_name``, handed to the callback: no node filter, no ack."""

    def _handle(self, raw: bytes) -> None:
        try:
            record = self.codec.decode(raw, expect=self.schema_name).record
        except DecodeError as err:
            self.undecodable += 1
            print(f"liquid: ignoring an undecodable {self.schema_name}: {err}", file=sys.stderr)
            return
        self.received += 1
        self.on_command(record)


class PolicyListener(RecordListener):
    """The published recovery policies (``workflow.policy``), read from the beginning: a node starts with the latest."""

    def __init__(self, settings, topic, ack_topic, nodes, on_command, codec=None, **options):
        super().__init__(settings, topic, ack_topic, nodes, on_command, codec, schema_name="RecoveryPolicy", **options)


class EdgeWorker:
    """Several nodes in one process, one command listener for all of them."""

    def __init__(self, settings, topics, node_ids: list[str], scenario: Scenario, zoo_dir=None,
                 sensor: str = "auto", rate: float = 100.0, interval_s: float = 1.0, time_scale: float = 1.0,
                 deadline_ms: float = 250.0, scenarios: dict | None = None, seed: int = 0, log=None,
                 power_profile: str = "cpu", workflow: str | None = None, workflow_runs: int | None = None,
                 workflow_gap_s: float = 0.0, workflow_seed: int = 0, outbox_path=None, keyring=None,
                 local_policy: PolicyConfig | None = None, silent_after_s: float | None = 10.0,
                 outbox_options: dict | None = None, codec: Codec | None = None, lighting=None,
                 takeover_after_s: float | None = None, workflow_cost_scale: float = 1.0,
                 fetch_wait_ms: int = EDGE_FETCH_WAIT_MS):
        self.settings, self.topics, self.log = settings, topics, log or (lambda m: None)
        # The fetch wait of the worker's listeners (not of the shadow listener, whose commands race
        # the runs): EDGE_FETCH_WAIT_MS for the embedded broker, LONG_POLL_FETCH_WAIT_MS for a
        # broker that long-polls (edge.listener).
        self.fetch_wait_ms = fetch_wait_ms
        self.manifest = load_manifest(zoo_dir)
        self.codec = codec or Codec()  # a registry's codec writes the Confluent framing
        self.interval_s, self.time_scale = interval_s, time_scale
        # The thermal model's power per variant: the zoo's measured CPU time per inference
        # (or FLOPs), so a node's temperature answers to the models it serves; "gpu" keeps
        # the GPU-like profile of edge.thermal.DEFAULT_VARIANT_POWER.
        cost = None if power_profile == "gpu" else self.manifest.relative_cost(
            {"flops": "flops", "cpu": "cpu_ms"}[power_profile])
        self.outbox_path = Path(outbox_path) if outbox_path else Path(tempfile.mkdtemp(prefix="liquid-outbox-")) / "outbox.db"
        # What each node served last, beside the outbox: a worker restarted while its node is
        # hot resumes the lighter model it had stepped down to, not the heaviest.
        self._serving_path = self.outbox_path.with_name(f"{self.outbox_path.stem}-serving.json")
        self._serving = json.loads(self._serving_path.read_text()) if self._serving_path.exists() else {}
        self._serving_lock = threading.Lock()
        self.nodes: dict[str, EdgeNode] = {}
        for i, node_id in enumerate(node_ids):
            variant, precision, batch = self._serving.get(node_id, ("transformer", "fp32", 16))
            server = InferenceServer(self.manifest, variant, precision)
            node_scenario = (scenarios or {}).get(node_id, scenario)
            self.nodes[node_id] = EdgeNode(
                node_id, server, RequestLoad(server, rate=rate, deadline_ms=deadline_ms, seed=seed + i,
                                             lighting=None if lighting is None else DriftingFrames(lighting),
                                             time_scale=time_scale),
                open_sensor(sensor, node_id, node_scenario, cost, seed=seed + i), batch_size=batch)
            if node_id in self._serving:
                self.nodes[node_id].load.set_batch_size(batch)
        # Record ids: node, this process's boot, a counter; unique across restarts.
        self.boot = format(time.time_ns() // 1000, "x")
        self._ack_numbers = itertools.count(1)
        self.safety = None if silent_after_s is None else LocalSafety(local_policy or PolicyConfig(), silent_after_s)
        contact = self.safety.contact if self.safety else None
        self.outbox = Outbox(self.outbox_path, lambda: Producer(idempotent_producer_config(settings)),
                             on_delivered=self._on_delivered, **(outbox_options or {}))
        self.verifier = None if keyring is None else CommandVerifier(
            keyring, replay_store=self.outbox_path.with_name(self.outbox_path.stem + "-accepted.db"))
        verify = self.verifier.check if self.verifier else None
        self.listener = CommandListener(settings, topics.commands, topics.acks, set(node_ids), self._on_command,
                                        self.codec, verify=verify, publish_ack=self._publish_ack, on_contact=contact,
                                        fetch_wait_ms=fetch_wait_ms)
        # Workflow runs with shadow pre-execution: runs emit signals, shadow commands go to the executor.
        self.workflow, self.workflow_runs, self.workflow_gap_s = workflow, workflow_runs, workflow_gap_s
        self.workflow_seed = workflow_seed
        self.shadow_listener = self.policy_listener = self.sync_listener = None
        self.takeover = None
        self._watchers: list = []
        self._runners: list[threading.Thread] = []
        if workflow is not None:
            self._set_up_workflow(node_ids, seed, workflow_cost_scale, takeover_after_s, verify, contact)
        self.last_telemetry: dict[str, dict] = {}
        self._halt = threading.Event()
        self._telemetry = threading.Thread(target=self._publish_telemetry, name="telemetry", daemon=True)

    def _set_up_workflow(self, node_ids, seed, cost_scale, takeover_after_s, verify, contact) -> None:
        """Workflow runs with shadow pre-execution, failure recovery and sync on every node, and the
        listeners they need (shadow commands, recovery policy, sync answers, takeover watchers)."""
        settings, topics, workflow = self.settings, self.topics, self.workflow
        if workflow != "inspection":
            raise ValueError(f"unknown workflow {workflow!r}; shipped: inspection")
        for node in self.nodes.values():
            node.executor = ShadowExecutor(node.node_id, on_ack=self._publish_ack)
            store = ExecutionStore(self.outbox_path.with_name(f"{self.outbox_path.stem}-{node.node_id}-records.db"),
                                   node.node_id)
            node.sync = SyncManager(store, self._publish_execution_record, commit=self.outbox.commit)
            node.recovery = PolicyRecovery(FailureView(), seed=seed)
            node.spec = inspection_workflow(ServedClassifier(node.server), pipeline=node.pipeline,
                                            costs=InspectionCosts().scaled(cost_scale))
        wait = self.fetch_wait_ms
        self.policy_listener = PolicyListener(settings, topics.policy, None, set(), self._on_policy, self.codec,
                                              from_beginning=True, fetch_wait_ms=wait)
        if takeover_after_s:
            self.takeover = Takeover(takeover_after_s)
            self._takeover_lock = threading.Lock()
            self._watchers = [
                RecordListener(settings, topics.checkpoints, None, set(), self._on_checkpoint, self.codec,
                               schema_name="RunCheckpoint", from_beginning=True, fetch_wait_ms=wait),
                RecordListener(settings, topics.telemetry, None, set(), self._on_heartbeat, self.codec,
                               schema_name="Telemetry", fetch_wait_ms=wait),
                threading.Thread(target=self._adopt_orphans, daemon=True, name="takeover")]
        # A shadow is worth something only if it arrives before the run reaches its step: the
        # flows' 5 ms fetch long-poll, not the edge listeners' EDGE_FETCH_WAIT_MS.
        self.shadow_listener = CommandListener(settings, topics.shadow, topics.acks, set(node_ids),
                                               self._on_shadow_command, self.codec, schema_name="ShadowCommand",
                                               verify=verify, publish_ack=self._publish_ack, on_contact=contact,
                                               fetch_wait_ms=None)
        # The central store's answers to the nodes' execution records, signed like commands.
        # Its read position beside the outbox: a restart resumes, not re-reads every answer.
        self.sync_listener = SyncOutcomeListener(
            settings, topics.sync, set(node_ids), self._on_sync_outcome, self.codec, verify=verify,
            position=TopicPosition(self.outbox_path.with_name(f"{self.outbox_path.stem}-positions.db"), topics.sync),
            fetch_wait_ms=wait)
        self._runners = [threading.Thread(target=self._run_workflows, args=(node,), daemon=True,
                                          name=f"runs-{node.node_id}") for node in self.nodes.values()]

    # -- lifecycle ------------------------------------------------------------
    def start(self, ready_timeout_s: float = 15.0) -> "EdgeWorker":
        self.outbox.start()
        for node in self.nodes.values():
            node.load.start()
        self.listener.start()
        if self.shadow_listener is not None:
            self.shadow_listener.start()
        if self.policy_listener is not None:
            self.policy_listener.start()
        if self.sync_listener is not None:
            self.sync_listener.start()
        # Telemetry does not wait for the broker: a node (re)started during an outage keeps
        # measuring into its outbox, and its local policy keeps it safe.
        self._telemetry.start()
        self.listener.wait_ready(ready_timeout_s)
        if self.shadow_listener is not None:
            self.shadow_listener.wait_ready(ready_timeout_s)
        if self.policy_listener is not None:
            self.policy_listener.wait_ready(ready_timeout_s)
        for watcher in self._watchers:
            watcher.start()
        for watcher in self._watchers[:2]:
            watcher.wait_ready(ready_timeout_s)
        for runner in self._runners:
            runner.start()
        for node in self.nodes.values():
            if node.sync is not None:
                node.sync.start()
        return self

    def wait_runs(self, timeout_s: float | None = None) -> bool:
        """Wait until every node has finished its ``workflow_runs`` (True) or the timeout passes."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for runner in self._runners:
            runner.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(r.is_alive() for r in self._runners)

    def stop(self, flush_timeout_s: float = 10.0) -> dict:
        """Stop taking commands, drain the request streams, flush; returns per-node stats."""
        self._halt.set()
        self.listener.halt()  # no new commands; the runs still take their shadows until they end
        for runner in self._runners:
            runner.join(timeout=30)
        # Halted together, then joined: each ends within one poll timeout, so the shutdown waits
        # for that once rather than once per listener.
        listeners = [self.listener, self.shadow_listener, self.policy_listener, self.sync_listener,
                     *(w for w in self._watchers if isinstance(w, CommandListener))]
        listeners = [listener for listener in listeners if listener is not None]
        for listener in listeners:
            listener.halt()
        for listener in listeners:
            listener.stop()
        for watcher in self._watchers:
            if not isinstance(watcher, CommandListener):
                watcher.join(timeout=30)
        self._telemetry.join(timeout=5)
        stats = {}
        for node_id, node in self.nodes.items():
            stats[node_id] = node.load.stop()
            if node.executor is not None:
                node.executor.wait_idle()
                node.executor.close()
                node.sync.stop()  # a last batch into the outbox
            node.server.close()
        self.outbox.flush(flush_timeout_s)
        self.outbox.close()  # anything undelivered stays in the outbox file for the next start
        for node in self.nodes.values():
            if node.sync is not None:
                node.sync.store.close()
        if self.sync_listener is not None:
            self.sync_listener.position.close()
        return stats

    def _remember_serving(self, node: EdgeNode, variant: str, precision: str) -> None:
        with self._serving_lock:
            self._serving[node.node_id] = (variant, precision, node.batch_size)
            tmp = self._serving_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._serving))
            tmp.replace(self._serving_path)

    def _on_delivered(self, record_id: str) -> None:
        if self.safety is not None:
            self.safety.contact()
        if record_id.startswith(("execution:", "step:")):
            for node in self.nodes.values():  # the store that holds it marks it; the others match no row
                if node.sync is not None:
                    node.sync.delivered(record_id)

    # -- commands -------------------------------------------------------------
    def _on_command(self, command: dict):
        return self._apply(self.nodes[command["node_id"]], command, "control")

    def _apply(self, node: EdgeNode, command: dict, origin: str):
        """Swap to what ``command`` says; the ack (origin ``control`` or ``local``) follows when it serves."""
        received_ms = int(time.time() * 1000)

        def acknowledge(result):
            if result.applied:
                node.batch_size = command["batch_size"]
                node.load.set_batch_size(command["batch_size"])
                self._remember_serving(node, result.to_variant, result.to_precision)
                stage = command.get("preprocessing")
                if stage in PREPROCESSING:
                    node.load.set_preprocessing(stage)
                elif stage is not None:
                    self.log(f"{node.node_id}: unknown preprocessing stage {stage!r} ignored")
                node.load.set_cache(bool(command.get("cache")))
                if command.get("pipeline"):
                    node.pipeline.set(command["pipeline"])
            ack = {
                "command_id": command["command_id"], "node_id": node.node_id, "kind": "MORPH",
                "status": {"applied": "APPLIED", "rejected": "REJECTED"}.get(result.status, "FAILED"),
                "reason": result.reason if result.status != APPLIED else "ok",
                "ts_ms": int(time.time() * 1000),
                "from_variant": result.from_variant, "to_variant": result.to_variant,
                "from_precision": result.from_precision, "to_precision": result.to_precision,
                "swap_ms": round(result.swap_ms, 3), "decided_on_ts_ms": command["decided_on_ts_ms"],
                "details": {"received_ts_ms": str(received_ms), "trigger": command["trigger"]},
                "origin": origin,
            }
            node.applied.append((command, ack))
            if origin == "local":
                self.safety.on_ack(ack)
            self._publish_ack(ack)
            self.log(f"{node.node_id}: {ack['status']} {command['from_variant']}->{command['to_variant']} "
                     f"{command['to_precision']} in {result.swap_ms:.1f} ms ({command['trigger']}: {command['reason']})")

        # Swaps run on the server's swap thread; the ack is sent when the new session serves.
        node.server.swap_async(command["to_variant"], command["to_precision"], command.get("model_sha256"),
                               callback=acknowledge)
        return None  # acknowledged asynchronously, above

    # -- workflow runs and their shadows ----------------------------------------
    def _on_shadow_command(self, command: dict):
        return self.nodes[command["node_id"]].executor.handle(command)

    def _publish(self, schema_name: str, topic: str, key: str, record: dict, record_id: str,
                 wait: bool = False) -> None:
        """Into the outbox; its drain thread sends it on when the broker takes it."""
        self.outbox.put(topic, key.encode(), self.codec.encode(schema_name, record), PRIORITY_OF_SCHEMA[schema_name],
                        record_id, wait=wait)

    def _publish_ack(self, ack: dict) -> None:
        """Every ack: of commands, of rejections, and of shadows that end without a command of their own."""
        ack["record_id"] = f"{ack['node_id']}-{self.boot}-a{next(self._ack_numbers)}"
        # A local decision's ack is committed at once: the control plane must learn of it even
        # after a crash. Others ride the group commit (a few ms): shadow acks are frequent.
        self._publish("CommandAck", self.topics.acks, ack["node_id"], ack, ack["record_id"],
                      wait=ack.get("origin") == "local")

    def _publish_execution_record(self, record: dict) -> bool:
        return self.outbox.put(self.topics.executions, record["node_id"].encode(),
                               self.codec.encode("ExecutionRecord", record), PRIORITY_OF_SCHEMA["ExecutionRecord"],
                               record["record_id"])

    def _on_sync_outcome(self, outcome: dict) -> None:
        self.nodes[outcome["node_id"]].sync.answer(outcome)

    def _on_policy(self, record: dict) -> None:
        table = RecoveryPolicyTable.from_record(record)
        for node in self.nodes.values():
            node.recovery.apply(table)

    def _publish_signal(self, signal: dict) -> None:
        self._publish("WorkflowSignal", self.topics.signals, signal["workflow_id"], signal, signal["signal_id"])

    def _run_workflows(self, node: EdgeNode) -> None:
        lots = inspection_lots(64, seed=self.workflow_seed)
        i = 0
        while not self._halt.is_set() and (self.workflow_runs is None or i < self.workflow_runs):
            # The boot in the run id: a restarted worker's runs are new runs, not duplicates of old ones.
            self._execute(node, f"{node.node_id}-{self.boot}-run-{i}", lots[i % len(lots)])
            i += 1
            if self.workflow_gap_s:
                self._halt.wait(self.workflow_gap_s)

    def _execute(self, node: EdgeNode, run_id: str, inputs=None, resume=None) -> None:
        """One run on ``node`` (``resume``: a lost node's, from its checkpoint); with takeover, its checkpoints too."""
        wf = node.spec.workflow_id
        checkpoint = None
        if self.takeover is not None:
            def checkpoint(status, step=None, artifacts=None, error=None, attempts=None):
                record = checkpoint_record(run_id, wf, node.node_id, time.time() * 1000, status, step, artifacts, error,
                                           attempts)
                self._publish("RunCheckpoint", self.topics.checkpoints, run_id, record,
                              f"checkpoint:{run_id}:{node.node_id}:{status}:{step}")
            if resume is None:
                checkpoint(STARTED, artifacts=inputs)
            else:  # claim the run at once: the other watchers see it has a live node again
                checkpoint(STARTED)
        # with takeover the worker's nodes can move a run: release it here, another node resumes it
        run = WorkflowRun(node.spec, run_id, node.node_id, executor=node.executor,
                          on_signal=lambda s, node=node: self._node_signal(node, s), recovery=node.recovery,
                          on_commit=None if checkpoint is None else lambda step, out: checkpoint(COMMITTED, step, out),
                          can_migrate=checkpoint is not None)
        result = run.execute(inputs) if resume is None else run.execute(resume=resume)
        if result.migrated:  # not over: the node that finishes it records it
            checkpoint(RELEASED, error=result.error, attempts=result.checkpoint.attempts)
            self.log(f"{node.node_id}: run {run_id} released to another node ({result.error})")
        elif checkpoint is not None:
            checkpoint(ENDED, error=result.error)
        node.runs.append(result)
        if not result.migrated:
            node.sync.store.record_run(wf, result)

    def _on_checkpoint(self, record: dict) -> None:
        with self._takeover_lock:
            self.takeover.learn_checkpoint(record)

    def _on_heartbeat(self, record: dict) -> None:
        with self._takeover_lock:
            self.takeover.learn_heartbeat(record["node_id"], record["ts_ms"] / 1000.0)

    def _adopt_orphans(self) -> None:
        """Resume, each in its own thread, the runs of lost nodes that fall to one of this worker's nodes."""
        while not self._halt.wait(0.5):
            with self._takeover_lock:
                orphans = self.takeover.orphans(time.time(), set(self.nodes))
                self.takeover.forget_ended()
            for node_id, resume in orphans:
                self.log(f"{node_id}: resuming run {resume.run_id} of lost node {resume.node_id} after "
                         f"{sorted(resume.done) or 'no step'}")
                thread = threading.Thread(target=self._execute, args=(self.nodes[node_id], resume.run_id),
                                          kwargs={"resume": resume}, daemon=True, name=f"resume-{resume.run_id}")
                thread.start()
                self._runners.append(thread)

    def _node_signal(self, node: EdgeNode, signal: dict) -> None:
        node.recovery.view.graph.learn_one(signal)  # the node's own recent failures, for its policy's state
        self._publish_signal(signal)

    # -- telemetry ------------------------------------------------------------
    def telemetry(self, node: EdgeNode, now_ms: int) -> dict:
        current = node.server.current
        readings = node.sensor.read(self.interval_s * self.time_scale, current.variant, current.precision,
                                    node.batch_size)
        stats = node.load.stats()
        node.seq += 1
        return {"node_id": node.node_id, "ts_ms": now_ms, "seq": node.seq, **readings,
                "record_id": f"{node.node_id}-{self.boot}-{node.seq}",
                "latency_ms": round(stats.mean_latency_ms, 3), "throughput_rps": stats.throughput_rps,
                **load_figures(stats, readings["power_w"]),
                "accuracy": None if stats.recent_accuracy is None else round(stats.recent_accuracy, 4),
                "confidence": None if stats.recent_confidence is None else round(stats.recent_confidence, 4),
                "preprocessing": node.load.preprocessing,
                "variant": current.variant, "precision": current.precision, "batch_size": node.batch_size,
                "source": node.sensor.source,
                # the class's default name when the sensor has no scenario (NVML), not a Scenario() per sample
                "scenario": getattr(getattr(node.sensor, "node", None), "scenario", Scenario).name}

    def _publish_telemetry(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            now_ms = int(time.time() * 1000)
            for node in self.nodes.values():
                record = self.telemetry(node, now_ms)
                self._publish("Telemetry", self.topics.telemetry, node.node_id, record, record["record_id"])
                self.last_telemetry[node.node_id] = record
                local = self.safety.observe(record) if self.safety is not None else None
                if local is not None:
                    self.log(f"{node.node_id}: control plane silent, deciding locally: {local['reason']}")
                    self._apply(node, local, "local")
            next_at += self.interval_s
            self._halt.wait(max(0.0, next_at - time.monotonic()))


def load_figures(stats, power_w: float) -> dict:
    """What the learned agent's reward needs beyond the resource readings: the offered load, the queue,
    the capacity the current configuration serves at, and the energy per request served."""
    served = stats.throughput_rps
    return {"offered_rps": round(stats.offered_rps, 2), "queue_len": int(stats.queue_len),
            "capacity_rps": None if stats.capacity_rps is None else round(stats.capacity_rps, 2),
            "energy_j_per_inference": round(power_w / served, 5) if served > 0 else None}
