"""Shared fixtures: a real Tansu broker per test (it starts in milliseconds), and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker():
    from deploy.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def kafka(broker):
    """Kafka settings for a fresh broker with every project topic created."""
    from deploy.topics import ensure_topics
    from schemas.kafka import KafkaSettings
    from schemas import TopicNames

    settings = KafkaSettings(broker.bootstrap)
    ensure_topics(settings, TopicNames().all(), partitions=2)
    return settings


@pytest.fixture(scope="session")
def zoo():
    """The model zoo the tests serve: the reduced profile (the same code as ``liquid zoo build``, fewer
    samples and epochs), built once and reused across runs and clones (`reduced_zoo_dir`)."""
    from morph.zoo import build_zoo

    return build_zoo(reduced_zoo_dir(), progress=None, profile="reduced")


def reduced_zoo_dir() -> Path:
    """``$LIQUID_TEST_ZOO_DIR``, else the user's cache under the digest of the code that builds the zoo:
    a fresh clone on the same machine (CI's) finds the build of the same code and skips two minutes of
    training, and changed code builds anew beside it."""
    from morph.zoo.manifest import build_digest

    if os.environ.get("LIQUID_TEST_ZOO_DIR"):
        return Path(os.environ["LIQUID_TEST_ZOO_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "liquid-workflow" / f"zoo-reduced-{build_digest()}"


def liquid_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "deploy.cli", *map(str, args)]


def run_liquid(*args, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(liquid_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"liquid {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def start_liquid(*args, log: Path) -> subprocess.Popen:
    return subprocess.Popen(liquid_cmd(*args), stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture()
def bench_script(monkeypatch):
    """``load(name)``: a benchmark script (``bench/<name>.py``) imported fresh as a module, forgotten after."""
    import importlib

    loaded = []

    def load(name: str):
        monkeypatch.syspath_prepend(str(ROOT / "bench"))
        sys.modules.pop(name, None)
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
