"""``liquid topics``: create the project's topics (idempotent) and list what a cluster has."""

from __future__ import annotations

from deploy.errors import UsageError
from deploy.kafka import (
    KafkaSettings,
    TopicNames,
    add_kafka_args,
    check_reachable,
    settings_from_args,
)

# One partition per Bytewax worker that reads the topic is the most a flow can use in parallel;
# each extra partition is another consumer fetching whether or not records arrive
# (AdaptiveWorkflow.partitions has the measurement). A single-worker flow is the default run.
DEFAULT_PARTITIONS = 1


def ensure_topics(settings: KafkaSettings, topics: list[str], partitions: int = DEFAULT_PARTITIONS,
                  replication: int = 1) -> dict[str, str]:
    """Create the topics that do not exist; ``{topic: "created" | "exists (N partitions)"}``."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewTopic

    metadata = check_reachable(settings)
    result = {t: f"exists ({len(metadata.topics[t].partitions)} partitions)"
              for t in topics if t in metadata.topics and metadata.topics[t].error is None}
    missing = [t for t in topics if t not in result]
    if not missing:
        return result
    admin = AdminClient(settings.client())
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=replication)
                                   for t in missing], operation_timeout=10)
    for topic, future in futures.items():
        try:
            future.result()
            result[topic] = f"created ({partitions} partitions)"
        except Exception as err:  # a concurrent creator won the race: that is fine
            kafka_error = err.args[0] if err.args else None
            if getattr(kafka_error, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[topic] = "exists"
            else:
                raise
    return result


def _create(args) -> int:
    if args.partitions < 1:
        raise UsageError("--partitions must be at least 1")
    settings = settings_from_args(args)
    topics = args.topic or TopicNames().all()
    for topic, outcome in ensure_topics(settings, topics, args.partitions, args.replication).items():
        print(f"{topic}: {outcome}")
    return 0


def _list(args) -> int:
    metadata = check_reachable(settings_from_args(args))
    for name in sorted(metadata.topics):
        print(f"{name}\t{len(metadata.topics[name].partitions)} partitions")
    return 0


def register(tree) -> None:
    p = tree.command("topics create", "create the project's topics (idempotent: existing ones are left alone)", _create)
    p.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="partitions per new topic: one per Bytewax worker of the flow that reads it (default %(default)s, for `flow run -w 1`)")
    p.add_argument("--replication", type=int, default=1, help="replication factor (default %(default)s)")
    p.add_argument("--topic", action="append", help="create only this topic (repeatable; default: all of the project's)")
    add_kafka_args(p)
    p = tree.command("topics list", "list the topics on the cluster with their partition counts", _list)
    add_kafka_args(p)
