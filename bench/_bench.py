"""What every benchmark shares: the project on the import path, progress on stderr, the JSON result line.

Benchmarks run as scripts (``python bench/NAME.py``), so Python puts ``bench/``
first on the import path; importing this module adds the project root once, here,
so a script imports the project's packages (and ``tests.support``) like any module.
Its name sorts before every other import, so it is always imported first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the figures and the JSON result)."""
    print(message, file=sys.stderr, flush=True)


def emit_result(result: dict) -> None:
    """The benchmark's last line: one JSON object with every figure."""
    print(json.dumps(result), flush=True)


class ExternalBroker:
    """A Kafka-compatible broker this benchmark did not start (``--bootstrap``), shaped like
    `deploy.broker.EmbeddedBroker` where benchmarks use it: ``bootstrap``, ``pid`` (``--broker-pid``,
    None when not given: the broker's CPU is then not measured) and a context that starts and stops nothing."""

    def __init__(self, bootstrap: str, pid: int | None = None):
        self.bootstrap, self.pid = bootstrap, pid

    def __enter__(self) -> "ExternalBroker":
        if self.pid is not None and not Path(f"/proc/{self.pid}").exists():
            raise SystemExit(f"--broker-pid {self.pid}: no such process on this machine")
        return self

    def __exit__(self, *exc) -> None:
        pass


def broker_for(args, **embedded):
    """The broker a benchmark runs against: ``--bootstrap``'s (external), else a fresh embedded one."""
    if getattr(args, "bootstrap", None):
        return ExternalBroker(args.bootstrap, args.broker_pid)
    from deploy.broker import EmbeddedBroker

    return EmbeddedBroker(**embedded)


def add_broker_options(ap) -> None:
    """``--bootstrap`` and ``--broker-pid``: run against a broker already running instead of the embedded one."""
    ap.add_argument("--bootstrap", metavar="HOST:PORT",
                    help="use the Kafka-compatible broker already running there instead of starting the embedded "
                         "Tansu (default: a fresh embedded broker); it should be fresh too: topics it already holds "
                         "keep their records")
    ap.add_argument("--broker-pid", type=int, metavar="PID",
                    help="with --bootstrap: the broker's process id on this machine, so its CPU is measured "
                         "(without it the broker's CPU figures are left out)")
