"""``liquid keys generate | rotate``: the Ed25519 keys that sign commands, and the nodes' keyring.

A key directory holds ``signing.key`` (the private key, PEM, mode 0600: give it
to the control flow with ``--signing-key``) and ``keyring.json`` (public keys
only: copy it to every node and start workers with ``--keyring``). ``rotate``
makes a new signing key and keeps the previous public key in the keyring, so
commands signed just before the rotation are still accepted; rotate again and
the oldest key is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

from deploy.errors import UsageError

PRIVATE, KEYRING = "signing.key", "keyring.json"


def generate_keys(directory: Path, force: bool = False) -> str:
    """A new signing key and a keyring trusting only it; returns the key id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.signing import Keyring, write_private_key

    directory = Path(directory)
    if (directory / PRIVATE).exists() and not force:
        raise UsageError(f"{directory / PRIVATE} exists: use `liquid keys rotate`, or --force to replace it")
    key = Ed25519PrivateKey.generate()
    write_private_key(directory / PRIVATE, key)
    ring = Keyring.of(key.public_key())
    _write_keyring(directory / KEYRING, ring)
    return ring.current


def rotate_keys(directory: Path) -> tuple[str, str]:
    """A new signing key; the keyring trusts it and the key it replaces. Returns (new id, previous id)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.signing import Keyring, load_private_key, write_private_key

    directory = Path(directory)
    if not (directory / PRIVATE).exists():
        raise UsageError(f"no signing key in {directory}: run `liquid keys generate --dir {directory}` first")
    old = load_private_key(directory / PRIVATE)
    new = Ed25519PrivateKey.generate()
    ring = Keyring.of(new.public_key(), old.public_key())
    _write_keyring(directory / KEYRING, ring)  # nodes trust the new key before anything is signed with it
    write_private_key(directory / PRIVATE, new)
    previous = [k for k in ring.keys if k != ring.current][0]
    return ring.current, previous


def _write_keyring(path: Path, ring) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ring.to_json(), indent=2) + "\n")
    tmp.replace(path)  # atomic: a worker re-reading the keyring never sees half a file


def _generate(args) -> int:
    key_id = generate_keys(args.dir, args.force)
    print(f"signing key {key_id}: {args.dir / PRIVATE} (private: control flow --signing-key); "
          f"{args.dir / KEYRING} (public: workers --keyring)")
    return 0


def _rotate(args) -> int:
    new, previous = rotate_keys(args.dir)
    print(f"signing key {new} replaces {previous}; {args.dir / KEYRING} trusts both: copy it to the nodes, "
          "then restart the control flow")
    return 0


def register(tree) -> None:
    p = tree.command("keys generate", "make the Ed25519 key that signs commands, and the nodes' keyring",
                     _generate, description=__doc__)
    p.add_argument("--dir", type=Path, default=Path(".cache/keys"), help="key directory (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing signing key")
    p = tree.command("keys rotate", "replace the signing key; the keyring keeps the previous public key",
                     _rotate, description=__doc__)
    p.add_argument("--dir", type=Path, default=Path(".cache/keys"), help="key directory (default %(default)s)")
