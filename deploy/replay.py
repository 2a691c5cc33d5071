"""``liquid replay``: re-read a topic from given offsets or a point in time.

Either dump the decoded records as JSON lines, or feed a flow run that starts
at those offsets and writes its outputs to separate replay topics (so live
workers never see replayed commands). Both read with ``assign()`` and never
commit, so no consumer group's committed offsets move.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

from deploy.errors import UsageError
from schemas.registry import codec_for
from deploy.kafka import add_kafka_args, require_topics, settings_from_args
from schemas.kafka import partition_ends


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time (UTC when no zone is given)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--from-time {text!r}: expected epoch ms or an ISO 8601 time") from None
    if dt.tzinfo is None:
        from datetime import timezone

        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def resolve_offsets(settings, topic: str, from_offsets: list[str] | None, from_time_ms: int | None,
                    partitions: int) -> dict[int, tuple[int, int]]:
    """``{partition: (start offset, end offset)}``, checked against the partitions' watermarks."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.consumer(f"liquid-replay-{time.time_ns()}"))
    try:
        marks = partition_ends(consumer, topic, partitions)
        starts: dict[int, int] = {}
        if from_time_ms is not None:
            found = consumer.offsets_for_times([TopicPartition(topic, p, from_time_ms) for p in range(partitions)],
                                               timeout=10)
            for tp in found:
                # -1: no message at or after that time in this partition: start at its end.
                starts[tp.partition] = tp.offset if tp.offset >= 0 else marks[tp.partition][1]
        else:
            for spec in from_offsets or ["0"]:
                if ":" in spec:
                    p_text, o_text = spec.split(":", 1)
                    targets = [int(p_text)]
                else:
                    o_text, targets = spec, list(range(partitions))
                offset = int(o_text)
                for p in targets:
                    if p not in marks:
                        raise UsageError(f"partition {p} does not exist in {topic} (it has {partitions})")
                    starts[p] = offset
            for p in range(partitions):
                starts.setdefault(p, marks[p][1])  # partitions not named: nothing to replay
        for p, offset in starts.items():
            low, high = marks[p]
            if not low <= offset <= high:
                raise UsageError(f"offset {offset} is out of range for {topic}[{p}]: valid offsets are {low}..{high}")
        return {p: (starts[p], marks[p][1]) for p in range(partitions)}
    finally:
        consumer.close()


def dump(settings, topic: str, ranges: dict[int, tuple[int, int]], out, max_records: int | None = None,
         codec=None, to_end: bool = False) -> dict:
    """Write decoded records as JSON lines; undecodable ones as ``{"_error": ...}`` lines. Returns counts.

    ``codec`` reads Confluent-framed messages when it has a registry (`schemas.registry.codec_for`).
    ``to_end``: read each partition on to its end as the fetches report it, past the end offset of
    ``ranges``. The embedded broker's listed end offset can lag what it stores and serves (546,642
    listed, 546,897 read, after a flow's sink had flushed), while its fetches end at the last record.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from schemas.codec import Codec, DecodeError, jsonable

    codec = codec or Codec()
    config = settings.bulk_consumer(f"liquid-replay-{time.time_ns()}")
    if to_end:
        config["enable.partition.eof"] = "true"
    consumer = Consumer(config)
    todo = {p: (s, e) for p, (s, e) in ranges.items() if e > s or to_end}
    consumer.assign([TopicPartition(topic, p, s) for p, (s, _) in todo.items()])
    counts = {"records": 0, "undecodable": 0}
    try:
        idle_since = time.monotonic()
        while todo and (max_records is None or counts["records"] + counts["undecodable"] < max_records):
            batch = consumer.consume(500, timeout=1.0)
            if batch:
                idle_since = time.monotonic()
            elif to_end and time.monotonic() - idle_since > 30:
                raise TimeoutError(f"{topic}: no record and no end of partition {sorted(todo)} within 30 s")
            for msg in batch:
                p, off = msg.partition(), msg.offset()
                if msg.error() is not None:
                    if to_end and msg.error().code() == KafkaError._PARTITION_EOF and p in todo and off >= todo[p][1]:
                        del todo[p]
                    continue
                if p not in todo or (off >= todo[p][1] and not to_end):
                    continue
                line = {"_partition": p, "_offset": off, "_timestamp_ms": msg.timestamp()[1]}
                try:
                    decoded = codec.decode(msg.value())
                    line.update(_schema=decoded.schema_name, **jsonable(decoded.record))
                    counts["records"] += 1
                except DecodeError as err:
                    line.update(_error=str(err), _raw_hex=(msg.value() or b"").hex())
                    counts["undecodable"] += 1
                out.write(json.dumps(line) + "\n")
                if off + 1 >= todo[p][1] and not to_end:
                    del todo[p]
                if max_records is not None and counts["records"] + counts["undecodable"] >= max_records:
                    break
    finally:
        consumer.close()
    return counts


def read_topic(settings, topic: str, partitions: int | None = None) -> list[dict]:
    """Every decodable record of a topic, in partition then offset order (tests and the demo use it)."""
    import io

    from deploy.kafka import check_reachable

    if partitions is None:
        partitions = len(check_reachable(settings).topics[topic].partitions)
    ranges = resolve_offsets(settings, topic, ["0"], None, partitions)
    buf = io.StringIO()
    dump(settings, topic, ranges, buf, to_end=True)
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _run(args) -> int:
    if args.from_offset and args.from_time:
        raise UsageError("give --from-offset or --from-time, not both")
    if not args.dump and not args.flow:
        raise UsageError("say what to do with the records: --dump or --flow NAME")
    from_time = parse_time_ms(args.from_time) if args.from_time else None
    for spec in args.from_offset or []:
        if not all(part.strip().lstrip("-").isdigit() for part in spec.split(":", 1)):
            raise UsageError(f"--from-offset {spec!r}: expected OFFSET or PARTITION:OFFSET")
    settings = settings_from_args(args)
    partitions = require_topics(settings, [args.topic])[args.topic]
    ranges = resolve_offsets(settings, args.topic, args.from_offset, from_time, partitions)
    summary = ", ".join(f"[{p}] {s}..{e}" for p, (s, e) in sorted(ranges.items()))
    print(f"replaying {args.topic}: {summary}", file=sys.stderr, flush=True)
    if args.dump:
        out = open(args.out, "w") if args.out else sys.stdout
        try:
            counts = dump(settings, args.topic, ranges, out, args.max, codec=codec_for(args.registry_url))
        finally:
            if args.out:
                out.close()
        print(f"replayed {counts['records']} records ({counts['undecodable']} undecodable)", file=sys.stderr)
        return 0
    from deploy.flowrun import FLOW_INPUTS, run_flow, spec_from_args
    from schemas import TopicNames

    spec = spec_from_args(args.flow, args)
    spec.tail = False
    spec.start = "end"  # input partitions other than the replayed ones contribute nothing
    spec.start_offsets = [[args.topic, p, s] for p, (s, _) in ranges.items()]
    names = TopicNames()
    inputs = {getattr(names, t) for t in FLOW_INPUTS[args.flow]}
    if args.topic not in inputs:
        raise UsageError(f"flow {args.flow} does not read {args.topic}; it reads {', '.join(sorted(inputs))}")
    suffix = args.output_suffix
    outputs = {"control": ("MorphCommand", "Alert"), "workflow": ("NextStepPrediction", "ShadowCommand")}[args.flow]
    spec.output_topics = {name: names.for_schema(name) + suffix for name in outputs}
    from deploy.topics import ensure_topics

    ensure_topics(settings, list(spec.output_topics.values()))
    print(f"flow {args.flow} output -> {', '.join(spec.output_topics.values())}", file=sys.stderr, flush=True)
    return run_flow(spec, workers=1)


def register(tree) -> None:
    p = tree.command("replay", "re-read a topic from offsets or a time: dump it, or feed a flow", _run,
                     description=__doc__)
    p.add_argument("--topic", required=True, help="topic to replay")
    p.add_argument("--from-offset", action="append", metavar="[PARTITION:]OFFSET",
                   help="start offset for every partition, or for one (repeatable); default: 0 everywhere")
    p.add_argument("--from-time", metavar="TIME", help="start at the first message at or after TIME (epoch ms or ISO 8601)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--dump", action="store_true", help="print decoded records as JSON lines")
    what.add_argument("--flow", choices=("control", "workflow"), help="feed this flow, writing to replay topics")
    p.add_argument("--out", type=Path, help="with --dump: write to this file instead of stdout")
    p.add_argument("--max", type=int, help="with --dump: stop after this many records")
    p.add_argument("--output-suffix", default=".replay",
                   help="with --flow: suffix of the output topics (default %(default)s), so live consumers never see them")
    from deploy.flowrun import add_flow_args

    add_flow_args(p)
    add_kafka_args(p)
