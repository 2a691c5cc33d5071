"""``liquid sync conflicts | resolve | edit``: the operator's side of the central execution store.

The sync flow (``liquid flow run sync --store PATH|DSN``) keeps the nodes'
execution and step records in the central store and answers each node. Under
the ``manual`` strategy a node's change to a record that was changed centrally
is held there for an operator:

* ``liquid sync conflicts --store S`` lists what is held (``--json`` for tools);
* ``liquid sync resolve ENTITY ID --keep edge|central --store S`` settles one,
  and tells the node (a ``SyncOutcome`` on ``edge.sync``, signed with
  ``--signing-key``): it takes the central version, or learns that its own was
  accepted;
* ``liquid sync edit ENTITY ID --status S [--field K=V] --store S`` is a central
  change (an operator's), the kind a node's later offline change conflicts with.
"""

from __future__ import annotations

import json
from pathlib import Path

from deploy.errors import UsageError
from deploy.kafka import add_kafka_args, parse_setting, settings_from_args


def _store(args):
    from fingerprint.store import CentralExecutions

    return CentralExecutions(args.store)


def _conflicts(args) -> int:
    held = _store(args).open_conflicts()
    if args.json:
        print(json.dumps(held, indent=1))
        return 0
    if not held:
        print("no conflict held for an operator")
        return 0
    for r in held:
        print(f"{r['entity']} {r['entity_id']} (node {r['node_id']}, edge version {r['edge_version']}): "
              f"node says {r['status']!r}, central says {r['central_status']!r}")
    return 0


def _resolve(args) -> int:
    from confluent_kafka import Producer

    from schemas import TopicNames
    from schemas.codec import Codec

    try:
        outcome = _store(args).resolve(args.entity, args.entity_id, args.keep)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.signing_key:
        from edge.signing import CommandSigner

        CommandSigner.from_file(args.signing_key, ttl_s=7200.0).sign(outcome)
    settings = settings_from_args(args)
    producer = Producer(settings.producer())
    producer.produce(TopicNames().sync, key=outcome["node_id"].encode(), value=Codec().encode("SyncOutcome", outcome))
    if producer.flush(10):
        raise UsageError(f"resolved in the store, but the broker at {settings.bootstrap} did not take the answer "
                         "for the node: it will be repeated when the node sends the record again")
    print(f"{args.entity} {args.entity_id}: {args.keep} kept; node {outcome['node_id']} told ({outcome['outcome']})")
    return 0


def _edit(args) -> int:
    try:
        _store(args).edit(args.entity, args.entity_id, args.status, dict(args.field or []))
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"{args.entity} {args.entity_id}: status {args.status!r} (central change)")
    return 0


def _store_arg(p) -> None:
    p.add_argument("--store", required=True, metavar="PATH|DSN",
                   help="the central store (the sync flow's --store: SQLite file or postgresql://...)")


def register(tree) -> None:
    p = tree.command("sync conflicts", "list the nodes' changes held for an operator (manual strategy)",
                     _conflicts, description=__doc__)
    _store_arg(p)
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p = tree.command("sync resolve", "settle a held conflict and tell the node", _resolve, description=__doc__)
    p.add_argument("entity", help="entity type: execution or step")
    p.add_argument("entity_id", help="id of the execution or step")
    p.add_argument("--keep", required=True, choices=("edge", "central"), help="which version stays")
    p.add_argument("--signing-key", type=Path, metavar="PEM", help="sign the answer (nodes with --keyring need it)")
    _store_arg(p)
    add_kafka_args(p)
    p = tree.command("sync edit", "change a record centrally (an operator's change)", _edit, description=__doc__)
    p.add_argument("entity", help="entity type: execution or step")
    p.add_argument("entity_id", help="id of the execution or step")
    p.add_argument("--status", required=True, help="the new status")
    p.add_argument("--field", metavar="KEY=VALUE", action="append", type=parse_setting, help="a field to set (repeatable)")
    _store_arg(p)
