"""Workflow signals/s through the workflow flow (Kafka in -> next-step predictions out).

Pre-produces the signals of a synthetic process with long-range dependence
(`bench/fingerprint_offline.py`'s process) spread over several workflows, then
runs ``liquid flow run workflow --until-end`` on 1 and 2 workers, each on a
fresh broker, net of the flow's start-up (measured on an empty topic). The
ceiling is the same predictor code offline, in this process, on the same
signals, measured in the same run.

    python bench/fingerprint_throughput.py [--runs 20000] [--workflows 8]

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import sys
import time

from _bench import emit_result
from control_throughput import flow_rate
from fingerprint_offline import bench_process

from prediction.nextstep import NextStepPredictor
from schemas import TopicNames
from schemas.codec import Codec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20_000, help="runs per workflow")
    ap.add_argument("--workflows", type=int, default=4)
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
    offline = n / (time.process_time() - start)
    print(f"offline predictor (same code, no Kafka, no Bytewax): {offline:,.0f} signals/s; {made} predictions")

    results = {"signals": n, "workflows": args.workflows, "offline_predictor_per_s": round(offline)}
    for name, scale in (("1_worker", ["-w", "1"]), ("2_workers", ["-w", "2"]), ("2_processes", ["-p", "2"])):
        r = flow_rate(messages, *scale, flow="workflow", topic=TopicNames().signals)
        results[f"signals_per_s_{name}"] = round(r["events_per_s"])
        results[f"predictions_{name}"] = r["predictions"]
        print(f"{name:>12}: {n} signals in {r['elapsed_s']:.2f} s ({r['startup_s']:.2f} s start-up) = "
              f"{r['events_per_s']:,.0f} signals/s; {r['predictions']} predictions; "
              f"ratio to offline {r['events_per_s'] / offline:.3f}", flush=True)
    results["ratio_1_worker_to_offline"] = round(results["signals_per_s_1_worker"] / offline, 4)
    results["target_signals_per_s_1_worker"] = 20_000
    emit_result(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
