"""How every command reaches Kafka: bootstrap address, librdkafka settings, topics.

With no ``--bootstrap`` a command uses the embedded broker's address
(``LIQUID_BOOTSTRAP`` or 127.0.0.1:9092, where ``liquid broker`` listens). Every
librdkafka setting passes through unchanged (``-X key=value`` or a properties
file), so a real cluster with SASL/TLS works the same way.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deploy.errors import UsageError
from schemas import TopicNames  # noqa: F401  (re-exported for commands)
from schemas.kafka import KafkaSettings

DEFAULT_BOOTSTRAP = f"127.0.0.1:{9092}"

def parse_properties(path: Path) -> dict:
    """A librdkafka properties file: ``key=value`` lines, ``#`` comments."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UsageError(f"cannot read Kafka config file {path}: {err.strerror}") from None
    conf = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise UsageError(f"{path}:{n}: expected key=value, got {line!r}")
        key, value = line.split("=", 1)
        conf[key.strip()] = value.strip()
    return conf


def parse_setting(text: str) -> tuple[str, str]:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Kafka")
    g.add_argument("--bootstrap", metavar="HOST:PORT", default=None,
                   help="Kafka bootstrap servers (default: $LIQUID_BOOTSTRAP or the embedded broker at "
                        f"{DEFAULT_BOOTSTRAP}, started with `liquid broker`)")
    g.add_argument("-X", dest="kafka_settings", metavar="KEY=VALUE", action="append", type=parse_setting,
                   default=[], help="a librdkafka setting, passed through (repeatable), e.g. -X security.protocol=SASL_SSL")
    g.add_argument("--kafka-config", type=Path, metavar="FILE",
                   help="librdkafka settings as a properties file (key=value lines); -X wins over it")


def settings_from_args(args: argparse.Namespace) -> KafkaSettings:
    conf = parse_properties(args.kafka_config) if getattr(args, "kafka_config", None) else {}
    conf.update(dict(getattr(args, "kafka_settings", []) or []))
    bootstrap = args.bootstrap or conf.pop("bootstrap.servers", None) or os.environ.get("LIQUID_BOOTSTRAP") \
        or DEFAULT_BOOTSTRAP
    return KafkaSettings(bootstrap=bootstrap, config=conf)


def check_reachable(settings: KafkaSettings, timeout_s: float = 5.0):
    """Metadata of the cluster, or a `UsageError` that says what to do."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        # log_level 0: librdkafka would print a line per failed connect attempt; the
        # outcome is reported below as one line that says what to do.
        admin = AdminClient(settings.client(**{"socket.connection.setup.timeout.ms": str(int(timeout_s * 1000)),
                                               "log_level": "0"}))
    except KafkaException as err:
        raise UsageError(f"bad Kafka setting: {err.args[0].str()}") from None
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as err:
        hint = ("start the embedded broker with `liquid broker`, or pass --bootstrap HOST:PORT"
                if settings.bootstrap == DEFAULT_BOOTSTRAP else "check --bootstrap and the -X security settings")
        raise UsageError(f"no Kafka broker answers at {settings.bootstrap} ({err.args[0].str()}): {hint}") from None


def require_topics(settings: KafkaSettings, topics: list[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Partition count of each topic; a `UsageError` naming the missing ones."""
    metadata = check_reachable(settings, timeout_s)
    missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]
    if missing:
        raise UsageError(f"unknown topic(s) {', '.join(missing)} on {settings.bootstrap}: "
                         "create them with `liquid topics create`")
    return {t: len(metadata.topics[t].partitions) for t in topics}
