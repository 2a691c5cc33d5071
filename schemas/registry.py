"""Schema registry: register every schema under ``<topic>-value`` and resolve ids.

Uses confluent-kafka's `SchemaRegistryClient`, so any Confluent-compatible
registry works (Confluent, Karapace, Redpanda, Apicurio in compatibility mode).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from schemas import SCHEMA_NAMES, TopicNames, schema_json


@dataclass(frozen=True)
class Registration:
    subject: str
    schema_name: str
    schema_id: int
    version: int
    outcome: str  # "registered", "unchanged", or "incompatible: ..."


def _client(url: str, config: dict | None = None):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient({"url": url, **(config or {})})


def register_all(url: str, topics: TopicNames = TopicNames(), config: dict | None = None,
                 dry_run: bool = False) -> list[Registration]:
    """Check compatibility, then register each schema under its topic's ``-value`` subject.

    An incompatible schema is reported and not registered; the others still are.
    """
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = _client(url, config)
    done = []
    for name in SCHEMA_NAMES:
        subject = f"{topics.for_schema(name)}-value"
        schema = Schema(json.dumps(schema_json(name)), "AVRO")
        try:
            existing = client.lookup_schema(subject, schema)
            done.append(Registration(subject, name, existing.schema_id, existing.version, "unchanged"))
            continue
        except SchemaRegistryError as err:
            if err.http_status_code != 404:
                raise
        try:
            compatible = client.test_compatibility(subject, schema)
        except SchemaRegistryError as err:
            compatible = err.http_status_code == 404  # no subject yet: nothing to be incompatible with
            if err.http_status_code != 404:
                raise
        if not compatible:
            done.append(Registration(subject, name, -1, -1, "incompatible with the latest registered version"))
            continue
        if dry_run:
            done.append(Registration(subject, name, -1, -1, "would register"))
            continue
        schema_id = client.register_schema(subject, schema)
        latest = client.get_latest_version(subject)
        done.append(Registration(subject, name, schema_id, latest.version, "registered"))
    return done


class RegistrySchemaIds:
    """`schemas.codec.SchemaIds` backed by a registry: ids by subject, schemas by id (cached)."""

    def __init__(self, url: str, topics: TopicNames = TopicNames(), config: dict | None = None):
        self._client = _client(url, config)
        self._topics = topics
        self._ids: dict[str, int] = {}

    def id_for(self, schema_name: str) -> int:
        if schema_name not in self._ids:
            from confluent_kafka.schema_registry import Schema

            subject = f"{self._topics.for_schema(schema_name)}-value"
            registered = self._client.lookup_schema(subject, Schema(json.dumps(schema_json(schema_name)), "AVRO"))
            self._ids[schema_name] = registered.schema_id
        return self._ids[schema_name]

    def schema_for(self, schema_id: int) -> dict:
        return json.loads(self._client.get_schema(schema_id).schema_str)


def codec_for(registry_url: str | None, topics: TopicNames = TopicNames()):
    """The codec every producer and reader uses: Confluent framing with a registry, single-object without.

    A registry-aware codec still reads single-object messages, so consumers can
    read both while producers migrate.
    """
    from schemas.codec import Codec

    return Codec(RegistrySchemaIds(registry_url, topics)) if registry_url else Codec()
