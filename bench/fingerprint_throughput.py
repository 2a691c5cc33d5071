"""Workflow signals/s through the workflow flow (Kafka in -> next-step predictions out).

Pre-produces the signals of a synthetic process with long-range dependence
(`bench/fingerprint_offline.py`'s process) spread over several workflows, then
runs ``liquid flow run workflow --until-end`` (the flow's defaults) on 1 worker,
2 workers and 2 processes, each on a fresh broker, net of the flow's start-up
and shut-down (measured on an empty topic, same options). The topics get one
partition per Bytewax worker of the configuration measured, as
``AdaptiveWorkflow.partitions`` and ``liquid topics create`` default to
(``--partitions N`` for a fixed count: each partition is one more consumer
fetching every 5 ms whether or not records arrive). Besides signals/s
(wall time: it depends on what else the machine runs) it prints the flow
process's CPU time per signal (user + system of the flow process and its
threads, net of the empty run's): less sensitive to other jobs on the machine.
The ceiling is the same predictor code offline, in this process, on the same
signals, measured in the same run (CPU time).

    python bench/fingerprint_throughput.py [--runs 20000] [--workflows 4] [--only 1_worker] [--partitions N]

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from _bench import emit_result, progress
from control_throughput import produce, run_flow
from fingerprint_offline import bench_process

from deploy.broker import EmbeddedBroker
from deploy.replay import read_topic
from deploy.topics import ensure_topics
from prediction.nextstep import NextStepPredictor
from schemas import TopicNames
from schemas.codec import Codec
from schemas.kafka import KafkaSettings

#: Each configuration: its ``liquid flow run`` options and its Bytewax workers in all.
SCALES = {"1_worker": (["-w", "1"], 1), "2_workers": (["-w", "2"], 2), "2_processes": (["-p", "2"], 2)}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def flow_run(messages, partitions: int, *args: str) -> dict:
    """One run of the workflow flow over ``messages`` on a fresh broker: wall and CPU seconds, predictions."""
    with EmbeddedBroker() as broker:
        settings, topics = KafkaSettings(broker.bootstrap), TopicNames()
        ensure_topics(settings, topics.all(), partitions=partitions)
        if messages:
            produce(settings, topics.signals, messages)
        cpu = _children_cpu_s()  # the broker is reaped after this block: only the flow process counts
        wall = run_flow(broker.bootstrap, *args, flow="workflow")
        cpu = _children_cpu_s() - cpu
        predictions = sum(1 for r in read_topic(settings, topics.predictions) if r.get("_schema") == "NextStepPrediction")
    return {"wall_s": wall, "cpu_s": cpu, "predictions": predictions}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20_000, help="runs per workflow (default 20000)")
    ap.add_argument("--workflows", type=int, default=4, help="workflows the runs are spread over (default 4)")
    ap.add_argument("--only", action="append", choices=list(SCALES),
                    help="run only this configuration (repeatable; default all three)")
    ap.add_argument("--partitions", type=int,
                    help="partitions per topic (default: one per Bytewax worker of the configuration)")
    args = ap.parse_args()
    process = bench_process()
    signals = []
    for w in range(args.workflows):
        for s in process.signals(args.runs, seed=w + 1, concurrent=8):
            signals.append({**s, "workflow_id": f"bench-{w}", "signal_id": f"{w}-{s['signal_id']}"})
    signals.sort(key=lambda s: s["ts_ms"])
    codec = Codec()
    messages = [(s["workflow_id"].encode(), codec.encode("WorkflowSignal", s)) for s in signals]
    n = len(messages)

    predictors: dict[str, NextStepPredictor] = {}
    start = time.process_time()
    made = 0
    for s in signals:
        p = predictors.get(s["workflow_id"]) or predictors.setdefault(s["workflow_id"], NextStepPredictor(s["workflow_id"]))
        made += len(p.predict_then_learn_one(s))
    offline_s = time.process_time() - start
    offline = n / offline_s
    print(f"offline predictor (same code, no Kafka, no Bytewax): {offline:,.0f} signals/s "
          f"({offline_s / n * 1e6:.1f} µs CPU/signal); {made} predictions", flush=True)

    results = {"signals": n, "workflows": args.workflows, "offline_predictor_per_s": round(offline),
               "offline_predictor_us_per_signal": round(offline_s / n * 1e6, 2)}
    if args.partitions is not None and args.partitions < 1:
        ap.error("--partitions must be at least 1")
    for name in args.only or SCALES:
        options, workers = SCALES[name]
        partitions = args.partitions or workers
        progress(f"{name}: start-up on an empty topic, then {n} signals ({partitions} partitions)")
        empty = flow_run([], partitions, *options)
        full = flow_run(messages, partitions, *options)
        rate = n / max(full["wall_s"] - empty["wall_s"], 1e-3)
        cpu_us = (full["cpu_s"] - empty["cpu_s"]) / n * 1e6
        results[f"signals_per_s_{name}"] = round(rate)
        results[f"flow_cpu_us_per_signal_{name}"] = round(cpu_us, 2)
        results[f"predictions_{name}"] = full["predictions"]
        results[f"partitions_{name}"] = partitions
        print(f"{name:>12}: {n} signals in {full['wall_s']:.2f} s ({empty['wall_s']:.2f} s start-up) = "
              f"{rate:,.0f} signals/s ({partitions} partitions); flow CPU {cpu_us:.1f} µs/signal; {full['predictions']} predictions; "
              f"ratio to offline {rate / offline:.3f}", flush=True)
    if "signals_per_s_1_worker" in results:
        results["ratio_1_worker_to_offline"] = round(results["signals_per_s_1_worker"] / offline, 4)
        results["cpu_ratio_1_worker_to_offline"] = round(
            results["flow_cpu_us_per_signal_1_worker"] / results["offline_predictor_us_per_signal"], 4)
    results["target_signals_per_s_1_worker"] = 20_000
    emit_result(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
