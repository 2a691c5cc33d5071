"""``liquid schemas``: show the Avro schemas, register them in a schema registry."""

from __future__ import annotations

import json

from deploy.errors import UsageError
from schemas import SCHEMA_NAMES, TopicNames, schema_json


def _show(args) -> int:
    from schemas.codec import Codec

    codec = Codec()
    names = [args.name] if args.name else SCHEMA_NAMES
    for name in names:
        if args.json:
            print(json.dumps(schema_json(name), indent=2))
            continue
        fp = codec._header[name][2:].hex()
        print(f"{name}  topic {TopicNames().for_schema(name)}  fingerprint (CRC-64-AVRO, LE) {fp}")
        for field in schema_json(name)["fields"]:
            print(f"  {field['name']:<22} {field['doc']}")
    return 0


def _register(args) -> int:
    from schemas.registry import register_all

    config = dict(args.registry_settings or [])
    try:
        done = register_all(args.registry_url, TopicNames(), config, dry_run=args.dry_run)
    except Exception as err:  # connection refused, auth, TLS: say what and where, in one line
        raise UsageError(f"schema registry at {args.registry_url} failed: {err}") from None
    bad = 0
    for r in done:
        bad += r.outcome.startswith("incompatible")
        where = f"id {r.schema_id}, version {r.version}" if r.schema_id >= 0 else "-"
        print(f"{r.subject:<32} {r.schema_name:<20} {r.outcome} ({where})")
    print(f"{len(done) - bad} of {len(done)} subjects registered or unchanged" + (f"; {bad} incompatible" if bad else ""))
    return 1 if bad else 0


def register(tree) -> None:
    from deploy.kafka import parse_setting

    p = tree.command("schemas show", "print each schema's fields, topic and fingerprint", _show)
    p.add_argument("name", nargs="?", choices=SCHEMA_NAMES, help="one schema (default: all)")
    p.add_argument("--json", action="store_true", help="print the .avsc JSON")
    p = tree.command("schemas register", "register every schema under <topic>-value after a compatibility check",
                     _register,
                     description="For each schema: if the registry already has it under <topic>-value, report it "
                                 "unchanged; otherwise test compatibility with the latest version and register it. "
                                 "Exit status 1 if any schema is incompatible.")
    p.add_argument("--registry-url", required=True, help="schema registry URL, e.g. http://localhost:8081")
    p.add_argument("-S", dest="registry_settings", metavar="KEY=VALUE", action="append", type=parse_setting,
                   help="a SchemaRegistryClient setting, e.g. -S basic.auth.user.info=user:secret (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="check compatibility only; register nothing")
