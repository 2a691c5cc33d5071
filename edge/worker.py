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
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import Producer

from edge.inspection import PipelineMode, ServedClassifier, inspection_lots, inspection_workflow
from edge.listener import CommandListener
from edge.runtime import WorkflowRun
from edge.sensors import open_sensor
from edge.serving import APPLIED, InferenceServer, RequestLoad
from edge.shadow import ShadowExecutor
from edge.thermal import Scenario
from morph.zoo import load_manifest
from schemas.codec import Codec


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
    pipeline: PipelineMode = field(default_factory=PipelineMode)  # optional inspection stages, set by commands
    runs: list = field(default_factory=list)      # edge.runtime.RunResult of every finished run


class EdgeWorker:
    """Several nodes in one process, one command listener for all of them."""

    def __init__(self, settings, topics, node_ids: list[str], scenario: Scenario, zoo_dir=None,
                 sensor: str = "auto", rate: float = 100.0, interval_s: float = 1.0, time_scale: float = 1.0,
                 deadline_ms: float = 250.0, scenarios: dict | None = None, seed: int = 0, log=None,
                 power_profile: str = "default", workflow: str | None = None, workflow_runs: int | None = None,
                 workflow_gap_s: float = 0.0, workflow_seed: int = 0):
        self.settings, self.topics, self.log = settings, topics, log or (lambda m: None)
        self.manifest = load_manifest(zoo_dir)
        self.codec = Codec()
        self.interval_s, self.time_scale = interval_s, time_scale
        # The thermal model's power per variant: a GPU-like profile by default. The zoo's
        # measured figures can drive it instead, but on this CPU they do not follow the
        # ladder (batch-1 overhead makes the snn cost more CPU than the cnn): see README.
        cost = None if power_profile == "default" else self.manifest.relative_cost(
            {"flops": "flops", "cpu": "cpu_ms"}[power_profile])
        self.nodes: dict[str, EdgeNode] = {}
        for i, node_id in enumerate(node_ids):
            server = InferenceServer(self.manifest, "transformer", "fp32")
            node_scenario = (scenarios or {}).get(node_id, scenario)
            self.nodes[node_id] = EdgeNode(
                node_id, server, RequestLoad(server, rate=rate, deadline_ms=deadline_ms, seed=seed + i),
                open_sensor(sensor, node_id, node_scenario, cost, seed=seed + i))
        self.producer = Producer(settings.producer(**{"linger.ms": "0"}))
        self.listener = CommandListener(settings, topics.commands, topics.acks, set(node_ids), self._on_command,
                                        self.codec)
        # Workflow runs with shadow pre-execution: runs emit signals, shadow commands go to the executor.
        self.workflow, self.workflow_runs, self.workflow_gap_s = workflow, workflow_runs, workflow_gap_s
        self.workflow_seed = workflow_seed
        self.shadow_listener = None
        self._runners: list[threading.Thread] = []
        if workflow is not None:
            if workflow != "inspection":
                raise ValueError(f"unknown workflow {workflow!r}; shipped: inspection")
            for node in self.nodes.values():
                node.executor = ShadowExecutor(node.node_id, on_ack=self._publish_ack)
            self.shadow_listener = CommandListener(settings, topics.shadow, topics.acks, set(node_ids),
                                                   self._on_shadow_command, self.codec, schema_name="ShadowCommand")
            self._runners = [threading.Thread(target=self._run_workflows, args=(node,), daemon=True,
                                              name=f"runs-{node.node_id}") for node in self.nodes.values()]
        self.last_telemetry: dict[str, dict] = {}
        self._halt = threading.Event()
        self._telemetry = threading.Thread(target=self._publish_telemetry, name="telemetry", daemon=True)

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "EdgeWorker":
        for node in self.nodes.values():
            node.load.start()
        self.listener.start()
        self.listener.wait_ready()
        if self.shadow_listener is not None:
            self.shadow_listener.start()
            self.shadow_listener.wait_ready()
        self._telemetry.start()
        for runner in self._runners:
            runner.start()
        return self

    def wait_runs(self, timeout_s: float | None = None) -> bool:
        """Wait until every node has finished its ``workflow_runs`` (True) or the timeout passes."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for runner in self._runners:
            runner.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(r.is_alive() for r in self._runners)

    def stop(self) -> dict:
        """Stop taking commands, drain the request streams, flush; returns per-node stats."""
        self._halt.set()
        self.listener.stop()
        for runner in self._runners:
            runner.join(timeout=30)
        if self.shadow_listener is not None:
            self.shadow_listener.stop()
        self._telemetry.join(timeout=5)
        stats = {}
        for node_id, node in self.nodes.items():
            stats[node_id] = node.load.stop()
            if node.executor is not None:
                node.executor.wait_idle()
                node.executor.close()
            node.server.close()
        self.producer.flush(10)
        return stats

    # -- commands -------------------------------------------------------------
    def _on_command(self, command: dict):
        node = self.nodes[command["node_id"]]
        received_ms = int(time.time() * 1000)

        def acknowledge(result):
            if result.applied:
                node.batch_size = command["batch_size"]
                node.load.set_batch_size(command["batch_size"])
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
            }
            node.applied.append((command, ack))
            self.producer.produce(self.topics.acks, key=node.node_id.encode(),
                                  value=self.codec.encode("CommandAck", ack))
            self.producer.poll(0)
            self.log(f"{node.node_id}: {ack['status']} {command['from_variant']}->{command['to_variant']} "
                     f"{command['to_precision']} in {result.swap_ms:.1f} ms ({command['trigger']}: {command['reason']})")

        # Swaps run on the server's swap thread; the ack is sent when the new session serves.
        node.server.swap_async(command["to_variant"], command["to_precision"], command.get("model_sha256"),
                               callback=acknowledge)
        return None  # acknowledged asynchronously, above

    # -- workflow runs and their shadows ----------------------------------------
    def _on_shadow_command(self, command: dict):
        return self.nodes[command["node_id"]].executor.handle(command)

    def _publish_ack(self, ack: dict) -> None:
        """Acks of shadows that end without a command of their own (commit at the live step, timeout, run end)."""
        self.producer.produce(self.topics.acks, key=ack["node_id"].encode(), value=self.codec.encode("CommandAck", ack))
        self.producer.poll(0)

    def _publish_signal(self, signal: dict) -> None:
        self.producer.produce(self.topics.signals, key=signal["workflow_id"].encode(),
                              value=self.codec.encode("WorkflowSignal", signal))
        self.producer.poll(0)

    def _run_workflows(self, node: EdgeNode) -> None:
        spec = inspection_workflow(ServedClassifier(node.server), pipeline=node.pipeline)
        lots = inspection_lots(64, seed=self.workflow_seed)
        i = 0
        while not self._halt.is_set() and (self.workflow_runs is None or i < self.workflow_runs):
            run = WorkflowRun(spec, f"{node.node_id}-run-{i}", node.node_id, executor=node.executor,
                              on_signal=self._publish_signal)
            node.runs.append(run.execute(lots[i % len(lots)]))
            i += 1
            if self.workflow_gap_s:
                self._halt.wait(self.workflow_gap_s)

    # -- telemetry ------------------------------------------------------------
    def telemetry(self, node: EdgeNode, now_ms: int) -> dict:
        current = node.server.current
        readings = node.sensor.read(self.interval_s * self.time_scale, current.variant, current.precision,
                                    node.batch_size)
        stats = node.load.stats()
        node.seq += 1
        return {"node_id": node.node_id, "ts_ms": now_ms, "seq": node.seq, **readings,
                "latency_ms": round(stats.mean_latency_ms, 3), "throughput_rps": stats.throughput_rps,
                "variant": current.variant, "precision": current.precision, "batch_size": node.batch_size,
                "source": node.sensor.source,
                "scenario": getattr(getattr(node.sensor, "node", None), "scenario", Scenario()).name}

    def _publish_telemetry(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            now_ms = int(time.time() * 1000)
            for node in self.nodes.values():
                record = self.telemetry(node, now_ms)
                self.producer.produce(self.topics.telemetry, key=node.node_id.encode(),
                                      value=self.codec.encode("Telemetry", record))
                self.last_telemetry[node.node_id] = record
            self.producer.poll(0)
            next_at += self.interval_s
            self._halt.wait(max(0.0, next_at - time.monotonic()))
