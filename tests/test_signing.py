"""Signed commands: keys from the command line, the node's checks, and a worker through the real broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from deploy.keys_cmd import generate_keys, rotate_keys
from edge.signing import CommandSigner, CommandVerifier, Keyring, load_private_key
from schemas.codec import Codec
from tests.conftest import run_liquid


def morph_command(node, n, variant, precision="fp32", sha=None):
    now = int(time.time() * 1000)
    return {"command_id": f"{node}-s{n}", "node_id": node, "decided_on_ts_ms": now, "issued_ts_ms": now,
            "trigger": "THRESHOLD", "from_variant": "?", "to_variant": variant, "from_precision": "?",
            "to_precision": precision, "batch_size": 16, "cache": False, "fallback": False, "model_sha256": sha,
            "reason": "test", "evidence": {"resource_score": 1.0, "temperature_c": 80.0, "window_mean_c": 80.0,
                                           "window_max_c": 80.0, "violation_fraction": 1.0, "window_size": 6,
                                           "contributing_features": []}}


def test_signature_survives_the_avro_round_trip():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = CommandSigner(Ed25519PrivateKey.generate())
    verifier = CommandVerifier(Keyring.of(signer.private_key.public_key()))
    codec = Codec()
    signed = signer.sign(morph_command("edge-1", 1, "lstm"))
    decoded = codec.decode(codec.encode("MorphCommand", signed)).record
    assert decoded != signed  # defaults filled in by the decoder (forecast fields, ...)
    assert verifier.check(decoded, "MORPH") is None


def test_keys_cli_generate_then_rotate_keeps_the_previous_key(tmp_path):
    out = run_liquid("keys", "generate", "--dir", tmp_path).stdout
    first = Keyring.load(tmp_path / "keyring.json").current
    assert first in out and (tmp_path / "signing.key").stat().st_mode & 0o077 == 0
    assert run_liquid("keys", "generate", "--dir", tmp_path, check=False).returncode == 2  # would overwrite
    old_signer = CommandSigner(load_private_key(tmp_path / "signing.key"))
    verifier = CommandVerifier(tmp_path / "keyring.json")  # a file: re-read when it changes
    assert verifier.check(old_signer.sign(morph_command("n", 1, "snn")), "MORPH") is None
    run_liquid("keys", "rotate", "--dir", tmp_path)
    ring = Keyring.load(tmp_path / "keyring.json")
    assert ring.current != first and set(ring.keys) == {ring.current, first}
    new_signer = CommandSigner(load_private_key(tmp_path / "signing.key"))
    # Both the command signed just before the rotation and the one after are accepted...
    assert verifier.check(old_signer.sign(morph_command("n", 2, "snn")), "MORPH") is None
    assert verifier.check(new_signer.sign(morph_command("n", 3, "snn")), "MORPH") is None
    # ... and after a second rotation the first key is no longer trusted.
    rotate_keys(tmp_path)
    assert verifier.check(old_signer.sign(morph_command("n", 4, "snn")), "MORPH").startswith("unknown key")


def test_replay_window_is_bounded_by_expiry():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    signer, verifier = CommandSigner(key, ttl_s=1), CommandVerifier(Keyring.of(key.public_key()), clock_skew_s=0)
    cmds = [signer.sign({**morph_command("n", i, "snn"), "issued_ts_ms": 0}) for i in range(3)]
    assert [verifier.check(c, "MORPH", now_ms=500) for c in cmds] == [None, None, None]
    # Out of order within the window is fine (two signers' commands may interleave); a repeat is not.
    late = signer.sign({**morph_command("n", 9, "lstm"), "issued_ts_ms": 0})
    assert verifier.check(late, "MORPH", now_ms=600) is None
    assert verifier.check(cmds[1], "MORPH", now_ms=700) == "replayed: sequence already accepted"
    assert verifier.check(cmds[0], "MORPH", now_ms=5_000).startswith("expired")
    assert len(verifier._accepted[("n", "MORPH")]) == 4
    # Once expired they are forgotten, and the floor still refuses their sequences.
    fresh = signer.sign({**morph_command("n", 10, "cnn"), "issued_ts_ms": 5_000})
    assert verifier.check(fresh, "MORPH", now_ms=5_000) is None
    assert len(verifier._accepted[("n", "MORPH")]) == 1
    assert verifier.check({**cmds[2], "expires_ts_ms": cmds[2]["expires_ts_ms"]}, "MORPH", now_ms=5_000) is not None


@pytest.mark.broker
def test_worker_rejects_forged_expired_replayed_and_unsigned_and_applies_after_rotation(kafka, zoo, tmp_path):
    from deploy.replay import read_topic
    from edge.thermal import Scenario
    from edge.worker import EdgeWorker
    from schemas import TopicNames

    topics, codec = TopicNames(), Codec()
    generate_keys(tmp_path / "keys")
    signer = CommandSigner(load_private_key(tmp_path / "keys" / "signing.key"), ttl_s=30)
    worker = EdgeWorker(kafka, topics, ["edge-1"], Scenario("steady"), zoo_dir=zoo.root, sensor="thermal", rate=100,
                        interval_s=0.2, keyring=tmp_path / "keys" / "keyring.json", outbox_path=tmp_path / "o.db",
                        silent_after_s=None).start()
    producer = Producer(kafka.producer())

    def send(command):
        producer.produce(topics.commands, key=b"edge-1", value=codec.encode("MorphCommand", command))
        producer.flush()
        time.sleep(0.4)

    try:
        sha = lambda v, p="fp32": zoo.entry(v, p).sha256  # noqa: E731
        good = signer.sign(morph_command("edge-1", 1, "lstm", sha=sha("lstm")))
        send(good)
        send(good)                                                                    # replayed
        send(morph_command("edge-1", 2, "snn", sha=sha("snn")))                       # unsigned
        forged = signer.sign(morph_command("edge-1", 3, "cnn", sha=sha("cnn")))
        send({**forged, "to_variant": "snn", "model_sha256": sha("snn")})             # forged (altered)
        stale = morph_command("edge-1", 4, "mobilenet", sha=sha("mobilenet"))
        stale["issued_ts_ms"] -= 120_000
        send(signer.sign(stale))                                                      # expired
        rotate_keys(tmp_path / "keys")
        rotated = CommandSigner(load_private_key(tmp_path / "keys" / "signing.key"), ttl_s=30)
        send(rotated.sign(morph_command("edge-1", 5, "cnn", "fp16", sha=sha("cnn", "fp16"))))
        send(signer.sign(morph_command("edge-1", 6, "mobilenet", sha=sha("mobilenet"))))  # previous key: still ok
        deadline = time.time() + 20
        while time.time() < deadline:
            acks = [a for a in read_topic(kafka, topics.acks) if a.get("_schema") == "CommandAck"]
            if len(acks) >= 7:
                break
            time.sleep(0.3)
    finally:
        stats = worker.stop()["edge-1"]
    by_id = {}
    for a in acks:
        by_id.setdefault(a["command_id"], []).append(a)
    assert [a["status"] for a in by_id["edge-1-s1"]] == ["APPLIED", "REJECTED"]
    assert by_id["edge-1-s1"][1]["reason"].startswith("replayed")
    assert by_id["edge-1-s2"][0]["status"] == "REJECTED" and by_id["edge-1-s2"][0]["reason"] == "unsigned"
    assert by_id["edge-1-s3"][0]["reason"].startswith("forged")
    assert by_id["edge-1-s4"][0]["reason"].startswith("expired")
    assert by_id["edge-1-s5"][0]["status"] == "APPLIED" and by_id["edge-1-s5"][0]["to_variant"] == "cnn"
    assert by_id["edge-1-s6"][0]["status"] == "APPLIED"
    assert worker.nodes["edge-1"].server.current.variant == "mobilenet"
    # Rejections did not interrupt serving; nothing that was refused ever served.
    assert stats.dropped == 0 and stats.served > 0
    served = {v for (v, p), m in stats.per_model.items() if m.served}
    assert "snn" not in served


def test_a_restarted_node_still_refuses_what_it_accepted(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    signer = CommandSigner(key)
    first = CommandVerifier(Keyring.of(key.public_key()), replay_store=tmp_path / "accepted.db")
    cmd = signer.sign(morph_command("n", 1, "snn"))
    assert first.check(cmd, "MORPH") is None
    restarted = CommandVerifier(Keyring.of(key.public_key()), replay_store=tmp_path / "accepted.db")
    assert restarted.check(cmd, "MORPH").startswith("replayed")
    assert restarted.check(signer.sign(morph_command("n", 2, "snn")), "MORPH") is None
