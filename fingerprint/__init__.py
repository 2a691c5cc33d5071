"""Temporal fingerprints of workflows, reconstructed from their task signals: plain Python.

`Fingerprint` (per workflow) learns WorkflowSignal dicts; `TaskDag` is its
explainable DAG view; `SignalStore` keeps the signal history; `fingerprint.traces`
turns event logs and WfCommons instances into signals. Nothing here imports
Bytewax or Kafka.
"""

from fingerprint.dag import TaskDag, TaskEdge, TaskNode
from fingerprint.signals import END, FINISHED, ISSUE_KINDS, START, STARTED
from fingerprint.store import SignalStore
from fingerprint.temporal import Fingerprint, Observed, Window

__all__ = ["END", "FINISHED", "ISSUE_KINDS", "START", "STARTED", "Fingerprint", "Observed", "SignalStore",
           "TaskDag", "TaskEdge", "TaskNode", "Window"]
