"""Signed commands: Ed25519 signatures on MorphCommand and ShadowCommand, checked by the node.

The control plane signs each command it emits (`CommandSigner`): it stamps the
key id, an expiry and a per-node sequence number, then signs the command's
canonical form (every field but the signature, as sorted compact JSON: the Avro
round trip gives back the same values, so the node rebuilds the same bytes).
The node checks each command against its `Keyring` (`CommandVerifier`) and
rejects, with the reason, a command that is unsigned, signed by a key it does
not trust, forged (the signature does not match), expired, or replayed (a
sequence it has accepted before, or older than anything it still remembers).

A keyring holds the current public key and the previous one, so commands
signed just before a rotation (``liquid keys rotate``) are still accepted.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.generate()
>>> signer = CommandSigner(key, ttl_s=30)
>>> verifier = CommandVerifier(Keyring.of(key.public_key()))
>>> cmd = signer.sign({"command_id": "c1", "node_id": "edge-1", "issued_ts_ms": 1_000, "to_variant": "snn"},
...                   now_ms=1_000)
>>> verifier.check(cmd, "MORPH", now_ms=2_000) is None
True
>>> verifier.check(cmd, "MORPH", now_ms=2_000)                  # the same command again
'replayed: sequence already accepted'
>>> verifier.check({**cmd, "to_variant": "transformer"}, "MORPH", now_ms=2_000)
'forged: signature does not match'
>>> verifier.check(signer.sign(dict(cmd), now_ms=1_000), "MORPH", now_ms=40_000)[:8]
'expired:'
>>> verifier.check({"command_id": "c2", "node_id": "edge-1"}, "MORPH", now_ms=2_000)
'unsigned'
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_FIELDS = ("key_id", "expires_ts_ms", "sequence", "signature")


def canonical_bytes(command: dict) -> bytes:
    """What is signed: every non-null field except the signature, as sorted compact JSON."""
    body = {k: v for k, v in command.items() if k != "signature" and not k.startswith("_")}
    return json.dumps(_without_nulls(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _without_nulls(value):
    # A field left out and a field set to null (its Avro default, filled in by the decoder)
    # are the same command, at any depth (the evidence record has optional fields too).
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key."""
    return hashlib.sha256(raw_public(public_key)).hexdigest()[:16]


class CommandSigner:
    """Signs commands with one private key.

    Parameters
    ----------
    private_key
        An ``Ed25519PrivateKey`` (`load_private_key` reads one from a PEM file).
    ttl_s
        A command expires this long after it was issued.
    """

    def __init__(self, private_key: Ed25519PrivateKey, ttl_s: float = 60.0):
        self.private_key, self.ttl_s = private_key, ttl_s
        self.key_id = key_id_of(private_key.public_key())
        self._last: dict[str, int] = {}

    @classmethod
    def from_file(cls, path, ttl_s: float = 60.0) -> "CommandSigner":
        return cls(load_private_key(path), ttl_s)

    def next_sequence(self, node_id: str) -> int:
        # Microseconds since the epoch, bumped past the last one: increasing per node even
        # across a restart of the signer, without state to snapshot.
        seq = max(self._last.get(node_id, 0) + 1, time.time_ns() // 1000)
        self._last[node_id] = seq
        return seq

    def sign(self, command: dict, now_ms: int | None = None) -> dict:
        """Stamp key id, expiry and sequence on ``command`` and sign it (in place; returned)."""
        issued = command.get("issued_ts_ms")
        if issued is None:
            issued = now_ms if now_ms is not None else int(time.time() * 1000)
        command["key_id"] = self.key_id
        command["expires_ts_ms"] = int(issued + self.ttl_s * 1000)
        command["sequence"] = self.next_sequence(command["node_id"])
        command["signature"] = None
        command["signature"] = base64.b64encode(self.private_key.sign(canonical_bytes(command))).decode()
        return command


@dataclass
class Keyring:
    """The public keys a node trusts: the current one and the one before it."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    current: str | None = None

    @classmethod
    def of(cls, *public_keys: Ed25519PublicKey) -> "Keyring":
        """A keyring of these keys, the first the current one."""
        ring = cls({key_id_of(k): k for k in public_keys})
        ring.current = key_id_of(public_keys[0]) if public_keys else None
        return ring

    @classmethod
    def load(cls, path) -> "Keyring":
        data = json.loads(Path(path).read_text())
        entries = [data["current"]] + ([data["previous"]] if data.get("previous") else [])
        keys = {e["key_id"]: Ed25519PublicKey.from_public_bytes(base64.b64decode(e["public_key"])) for e in entries}
        for e in entries:
            if key_id_of(keys[e["key_id"]]) != e["key_id"]:
                raise ValueError(f"keyring {path}: key id {e['key_id']} does not match its public key")
        return cls(keys, data["current"]["key_id"])

    def to_json(self) -> dict:
        def entry(kid):
            return {"key_id": kid, "public_key": base64.b64encode(raw_public(self.keys[kid])).decode()}
        previous = [k for k in self.keys if k != self.current]
        return {"current": entry(self.current), "previous": entry(previous[-1]) if previous else None}


class CommandVerifier:
    """Checks commands on the node: signature, key, expiry, replay.

    Parameters
    ----------
    keyring
        A `Keyring`, or the path of a keyring file (re-read when the file changes,
        so a rotation needs no restart of the worker).
    clock_skew_s
        Tolerated difference between the signer's and the node's clocks.
    replay_store
        A SQLite file where the highest accepted sequence per node and command type
        is kept, so a restarted worker still refuses commands it accepted before
        (without it, a replay within the expiry would pass after a restart).
    """

    def __init__(self, keyring, clock_skew_s: float = 5.0, replay_store=None):
        self._path = None if isinstance(keyring, Keyring) else Path(keyring)
        self._mtime = None
        self.keyring = keyring if isinstance(keyring, Keyring) else Keyring.load(self._path)
        self.skew_ms = int(clock_skew_s * 1000)
        # (node, kind) -> {sequence: expires_ts_ms} of accepted, unexpired commands, and the
        # floor: the highest sequence forgotten (expired). Bounded by the expiry window.
        self._accepted: dict[tuple[str, str], dict[int, int]] = {}
        self._floor: dict[tuple[str, str], int] = {}
        self._store = None
        if replay_store is not None:
            self._store = sqlite3.connect(str(replay_store), check_same_thread=False, isolation_level=None)
            self._store.execute("CREATE TABLE IF NOT EXISTS accepted (node TEXT, kind TEXT, sequence INTEGER, "
                                "PRIMARY KEY (node, kind))")
            self._floor = {(n, k): q for n, k, q in self._store.execute("SELECT node, kind, sequence FROM accepted")}

    def _reload(self) -> None:
        if self._path is None:
            return
        mtime = os.stat(self._path).st_mtime_ns
        if mtime != self._mtime:
            self.keyring, self._mtime = Keyring.load(self._path), mtime

    def check(self, command: dict, kind: str, now_ms: int | None = None) -> str | None:
        """None when the command may run (and it is remembered), else why it is rejected."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if not command.get("signature"):
            return "unsigned"
        self._reload()
        public = self.keyring.keys.get(command.get("key_id"))
        if public is None:
            return f"unknown key {command.get('key_id')}: not in the node's keyring"
        try:
            public.verify(base64.b64decode(command["signature"]), canonical_bytes(command))
        except (InvalidSignature, ValueError):
            return "forged: signature does not match"
        expires, seq = command.get("expires_ts_ms"), command.get("sequence")
        if expires is None or seq is None:
            return "unsigned: no expiry or sequence"
        if now_ms > expires + self.skew_ms:
            return f"expired: {(now_ms - expires) / 1000:.1f} s ago"
        slot = (command["node_id"], kind)
        accepted = self._accepted.setdefault(slot, {})
        for old, old_expiry in list(accepted.items()):  # forget what can no longer be replayed unexpired
            if now_ms > old_expiry + self.skew_ms:
                del accepted[old]
                self._floor[slot] = max(self._floor.get(slot, 0), old)
        if seq in accepted:
            return "replayed: sequence already accepted"
        if seq <= self._floor.get(slot, 0):
            return "replayed: sequence older than the node's window"
        accepted[seq] = expires
        if self._store is not None:
            self._store.execute("INSERT INTO accepted VALUES (?, ?, ?) ON CONFLICT (node, kind) DO UPDATE "
                                "SET sequence = max(sequence, excluded.sequence)", (*slot, seq))
        return None


def load_private_key(path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def write_private_key(path, key: Ed25519PrivateKey) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
