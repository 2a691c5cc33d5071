"""The edge worker's serving core: one ONNX Runtime session serving, hot-swapped on command.

No Kafka here: the worker wires a command consumer and a telemetry producer
around these pieces.

`InferenceServer` holds the session now serving. ``infer`` reads that
reference once per call, so a call runs entirely on one model and holds no
lock while it runs. ``swap`` verifies the requested model against the zoo
manifest (and the command's checksum), opens it from the very bytes it
hashed, warms it with a few inferences and only then replaces the reference;
until that instant, requests keep flowing on the old session, which is freed
when the last call using it returns. A rejected or failed swap leaves the old
model serving.

Swaps are serialised. ``swap_async`` queues the request on one swap thread
and returns a Future: commands are applied in arrival order, each gets its own
`SwapResult` (one ack per command), and the last command received is the one
left serving. A swap to the model already serving is applied at once without
reloading, so a redelivered command is harmless.

`RequestLoad` is the steady request stream the worker serves and reports on:
requests arrive at a fixed rate in small batches, drawn from the zoo's test
split, and each ends exactly once, served (within its deadline) or dropped
(late or errored). Besides the accuracy on labelled requests it reports a
confidence proxy that needs no labels: the mean top-1 softmax probability of
the requests served over the last second.

>>> r = SwapResult(REJECTED, "unknown variant 'gpt'", "cnn", "fp32", "gpt", "fp32", 0.1)
>>> r.applied, r.status
(False, 'rejected')
>>> c = ModelCounts(served=8, correct=6)
>>> c.accuracy
0.75
>>> top1_probability(np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])).round(3)
array([0.787, 0.333])
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import itertools
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from edge.result_cache import ResultCache
from morph.ladder import PRECISIONS, VARIANTS
from morph.zoo import runtime
from morph.zoo.data import DriftingFrames, InspectionSplit, load_split
from morph.zoo.lighting import PREPROCESSING
from morph.zoo.manifest import ZooManifest, load_manifest

APPLIED, REJECTED, FAILED = "applied", "rejected", "failed"


#: Upper bounds (s) of the request latency histogram a worker exports (`edge.metrics`).
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

@dataclass(frozen=True)
class LoadedModel:
    """A warmed session and what it is."""

    variant: str
    precision: str
    sha256: str
    session: object = field(repr=False)   # onnxruntime.InferenceSession
    loaded_at: float = 0.0                # time.time() when it started serving


@dataclass(frozen=True)
class Predictions:
    """Output of one `InferenceServer.infer` call, stamped with the model that made it."""

    labels: np.ndarray
    logits: np.ndarray
    variant: str
    precision: str
    sha256: str


@dataclass(frozen=True)
class SwapResult:
    """The outcome of one swap request: what the worker acknowledges."""

    status: str            # applied | rejected | failed
    reason: str
    from_variant: str
    from_precision: str
    to_variant: str
    to_precision: str
    swap_ms: float         # verify + open + warm + swap, after waiting for earlier swaps
    sha256: str | None = None

    @property
    def applied(self) -> bool:
        return self.status == APPLIED


class _Rejected(Exception):
    """The request is invalid or fails verification; nothing was loaded."""


class InferenceServer:
    """Serves one zoo model at a time and swaps to another without pausing requests.

    ``manifest`` may be a `ZooManifest` or a zoo directory (None: the default zoo).
    """

    def __init__(self, manifest: ZooManifest | str | None = None, variant: str = "transformer",
                 precision: str = "fp32", *, warmup_runs: int = 3, warmup_batch: int = 8, threads: int = 1,
                 history: int = 100):
        self.manifest = manifest if isinstance(manifest, ZooManifest) else load_manifest(manifest)
        self.warmup_runs, self.warmup_batch, self.threads = warmup_runs, warmup_batch, threads
        self._swap_lock = threading.Lock()      # serialises swaps; serving never takes it
        # One worker thread: queued swaps run in arrival order (it starts on the first submit).
        self._swapper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoo-swap")
        self._history_lock = threading.Lock()
        self._history: collections.deque[SwapResult] = collections.deque(maxlen=history)
        try:
            self._current = replace(self._load(variant, precision, None), loaded_at=time.time())
        except _Rejected as err:
            raise ValueError(str(err)) from None

    # -- serving ------------------------------------------------------------
    @property
    def current(self) -> LoadedModel:
        return self._current

    def infer(self, batch: np.ndarray) -> Predictions:
        """Classify ``batch`` (float32 frames [N, *manifest.input_shape]) on the model serving now."""
        model = self._current  # one read: a concurrent swap cannot split this call across models
        logits = model.session.run(None, {runtime.INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return Predictions(logits.argmax(axis=1), logits, model.variant, model.precision, model.sha256)

    # -- swapping -----------------------------------------------------------
    def swap(self, variant: str, precision: str, expected_sha256: str | None = None) -> SwapResult:
        """Verify, load and warm (variant, precision) in the calling thread, then swap it in.

        Never raises for a bad request or a broken model: the result says
        rejected (unknown, not in the manifest, checksum mismatch) or failed
        (the file or the session could not be loaded)."""
        with self._swap_lock:
            start = time.perf_counter()
            before = self._current

            def result(status: str, reason: str, sha: str | None = None) -> SwapResult:
                done = SwapResult(status, reason, before.variant, before.precision, variant, precision,
                                  (time.perf_counter() - start) * 1e3, sha)
                with self._history_lock:
                    self._history.append(done)
                return done

            if (variant, precision) == (before.variant, before.precision) and \
                    (expected_sha256 is None or expected_sha256.lower() == before.sha256):
                return result(APPLIED, "already serving", before.sha256)
            try:
                new = self._load(variant, precision, expected_sha256)
            except _Rejected as err:
                return result(REJECTED, str(err))
            except Exception as err:  # whatever ONNX Runtime or the file system raised
                return result(FAILED, f"{type(err).__name__}: {err}".strip()[:500])
            self._current = replace(new, loaded_at=time.time())  # the atomic swap
            return result(APPLIED, "verified, warmed and swapped", new.sha256)

    def swap_async(self, variant: str, precision: str, expected_sha256: str | None = None,
                   callback: Callable[[SwapResult], None] | None = None) -> Future:
        """Queue a swap on the swap thread; returns a Future of its `SwapResult`.

        ``callback`` (if given) is called with the result on the swap thread."""
        future = self._swapper.submit(self.swap, variant, precision, expected_sha256)
        if callback is not None:
            future.add_done_callback(lambda f: callback(f.result()))
        return future

    def swap_history(self) -> list[SwapResult]:
        """The most recent swap results, oldest first."""
        with self._history_lock:
            return list(self._history)

    def close(self) -> None:
        """Finish queued swaps and stop the swap thread."""
        self._swapper.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _load(self, variant: str, precision: str, expected_sha256: str | None) -> LoadedModel:
        if variant not in VARIANTS:
            raise _Rejected(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        if precision not in PRECISIONS:
            raise _Rejected(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        if (variant, precision) not in self.manifest:
            raise _Rejected(f"{variant}/{precision} is not in the zoo manifest at {self.manifest.root}")
        entry = self.manifest.entry(variant, precision)
        blob = (self.manifest.root / entry.path).read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != entry.sha256:
            raise _Rejected(f"checksum mismatch: {entry.path} hashes to {digest[:12]}..., "
                            f"the manifest says {entry.sha256[:12]}...")
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            raise _Rejected(f"checksum mismatch: the command expects {expected_sha256[:12]}..., "
                            f"{entry.path} is {digest[:12]}...")
        # Open from the bytes just hashed: what runs is exactly what was verified.
        session = runtime.open_session(blob, self.threads)
        for n in (1, self.warmup_batch):
            for _ in range(self.warmup_runs):
                session.run(None, {runtime.INPUT: np.zeros((n, *self.manifest.input_shape), np.float32)})
        return LoadedModel(variant, precision, digest, session)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from a batch of logits (rows), float32."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def top1_probability(logits: np.ndarray) -> np.ndarray:
    """Each row's largest softmax probability: how sure the model is of what it answered."""
    z = logits - logits.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)


# -- the request stream -------------------------------------------------------

@dataclass
class ModelCounts:
    """Requests one (variant, precision) served, and how many it got right."""

    served: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.served if self.served else 0.0


@dataclass(frozen=True)
class RequestRecord:
    """One request's fate (kept only when `RequestLoad` is asked to keep a log)."""

    request_id: int
    arrived: float          # monotonic seconds
    done: float
    served: bool            # False: dropped (late or errored)
    variant: str | None     # None when the call errored
    precision: str | None
    label: int
    predicted: int | None


@dataclass(frozen=True)
class ThroughputSample:
    """One second of the load: requests served and dropped in it, and the model serving at its end."""

    second: int
    served: int
    dropped: int
    variant: str
    precision: str


@dataclass(frozen=True)
class LoadStats:
    """A consistent snapshot of a `RequestLoad`: submitted == served + dropped + in_flight."""

    submitted: int
    served: int
    dropped: int
    late: int               # dropped because they missed the deadline
    errors: int             # dropped because inference raised
    in_flight: int
    correct: int
    per_model: dict         # (variant, precision) -> ModelCounts
    throughput_rps: float   # served in the last second
    mean_latency_ms: float  # of requests finished in the last second (overall mean if none)
    max_latency_ms: float   # since the start
    elapsed_s: float
    recent_accuracy: float | None = None  # of labelled requests served in the last second (None: none served)
    cache_hit_rate: float = 0.0  # share of requests answered by the result cache (while it was on)
    offered_rps: float = 0.0     # requests arriving per second (the offered load)
    queue_len: int = 0           # requests arrived but not yet started (how far serving lags the arrivals)
    capacity_rps: float | None = None  # requests per second of serving time over the last second: what it could serve
    #: Mean top-1 softmax probability of the requests the model answered over the last second (no labels
    #: needed; a batch answered even partly from the result cache carries no logits and does not count).
    recent_confidence: float | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / self.served if self.served else 0.0


class RequestLoad:
    """A steady request stream against an `InferenceServer`, on its own thread.

    Every ``batch_size / rate`` seconds a batch of ``batch_size`` requests
    arrives and is served; a request's latency runs from its arrival, so
    falling behind schedule counts against the deadline. A request is dropped
    when its batch raised or finished after ``deadline_ms``.
    """

    def __init__(self, server: InferenceServer, rate: float = 200.0, batch_size: int = 4,
                 deadline_ms: float = 250.0, inputs: InspectionSplit | None = None, seed: int = 0,
                 keep_log: bool = False, lighting: DriftingFrames | None = None, time_scale: float = 1.0):
        if rate <= 0 or batch_size <= 0:
            raise ValueError("rate and batch_size must be positive")
        self.server, self.rate, self.batch_size = server, rate, batch_size
        self.deadline_s = deadline_ms / 1e3
        # With ``lighting`` the frames follow a shift change (same parts, drifting light) in scenario time.
        self.lighting, self.time_scale = lighting, time_scale
        self.inputs = lighting.at(0.0) if lighting is not None else inputs if inputs is not None else load_split("test")
        self.preprocessing = "none"
        self._order = np.random.default_rng(seed).permutation(len(self.inputs))
        self.keep_log = keep_log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._t_end: float | None = None   # set by stop(): history and elapsed freeze there
        self._submitted = self._served = self._late = self._errors = self._in_flight = self._correct = 0
        self._latency_sum = self._max_latency = 0.0
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # served requests per latency bucket (+Inf last)
        self._per_model: dict[tuple[str, str], ModelCounts] = {}
        # (done, served, latency_sum, correct, top-1 probability sum, requests with logits)
        self._recent: collections.deque = collections.deque()
        self._busy: collections.deque = collections.deque()     # (done, requests, serving seconds) per batch
        self._seconds: dict[int, list] = {}                      # second -> [served, dropped, variant, precision]
        self._log: list[RequestRecord] = []
        self._cache: ResultCache | None = None   # kept when switched off, so its hit rate stays readable
        self._cache_on = False

    # -- control ------------------------------------------------------------
    def start(self) -> RequestLoad:
        if self._thread is not None:
            raise RuntimeError("load already started")
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="request-load", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> LoadStats:
        """Stop issuing requests, wait for the one in flight, return the final stats."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            if self._t0 and self._t_end is None:
                self._t_end = time.monotonic()
        return self.stats()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- reading ------------------------------------------------------------
    def stats(self) -> LoadStats:
        with self._lock:
            now = self._t_end or time.monotonic()
            self._prune(now)
            recent_n = sum(r[1] for r in self._recent)
            recent_lat = sum(r[2] for r in self._recent)
            recent_correct = sum(r[3] for r in self._recent)
            confident_n = sum(r[5] for r in self._recent)
            mean_s = recent_lat / recent_n if recent_n else (self._latency_sum / self._served if self._served else 0.0)
            busy_n, busy_s = sum(b[1] for b in self._busy), sum(b[2] for b in self._busy)
            arrived = int((now - self._t0) * self.rate) if self._t0 else 0
            return LoadStats(
                offered_rps=float(self.rate), queue_len=max(0, arrived - self._submitted),
                capacity_rps=busy_n / busy_s if busy_s > 0 else None,
                submitted=self._submitted, served=self._served, dropped=self._late + self._errors,
                late=self._late, errors=self._errors, in_flight=self._in_flight, correct=self._correct,
                per_model={k: replace(v) for k, v in self._per_model.items()},
                throughput_rps=float(recent_n), mean_latency_ms=mean_s * 1e3,
                max_latency_ms=self._max_latency * 1e3, elapsed_s=(now - self._t0) if self._t0 else 0.0,
                recent_accuracy=recent_correct / recent_n if recent_n else None,
                recent_confidence=sum(r[4] for r in self._recent) / confident_n if confident_n else None,
                cache_hit_rate=self._cache.hit_rate if self._cache is not None else 0.0)

    def latency_histogram(self) -> tuple[list[tuple[float, int]], float]:
        """Served requests by latency: ``([(upper bound s, cumulative count), ..., (inf, served)], latency sum s)``."""
        with self._lock:
            counts, total = list(self._latency_counts), self._latency_sum
        cumulative = list(itertools.accumulate(counts))
        return list(zip((*LATENCY_BUCKETS_S, float("inf")), cumulative)), total

    def history(self) -> list[ThroughputSample]:
        """Requests served and dropped per whole second since the start (empty seconds as zeros)."""
        with self._lock:
            if not self._t0:
                return []
            last = int((self._t_end or time.monotonic()) - self._t0)
            current = self.server.current
            out, variant, precision = [], current.variant, current.precision
            for sec in range(last):  # whole seconds only; the running one is still filling
                served, dropped, v, p = self._seconds.get(sec, (0, 0, None, None))
                out.append(ThroughputSample(sec, served, dropped, v or variant, p or precision))
            return out

    def records(self) -> list[RequestRecord]:
        """Every request's fate, in order (only with ``keep_log=True``)."""
        with self._lock:
            return list(self._log)

    # -- the serving loop ---------------------------------------------------------
    def set_batch_size(self, batch_size: int) -> None:
        """Serve ``batch_size`` requests per call from the next batch on; the request rate stays.

        (A morph command's batch size: fewer, larger calls, or more, smaller ones.)"""
        if int(batch_size) <= 0:
            raise ValueError("batch_size must be positive")
        self.batch_size = int(batch_size)

    def set_preprocessing(self, stage: str) -> None:
        """Run requests through the named preprocessing stage (`morph.zoo.lighting.PREPROCESSING`)
        from the next batch on: ``none``, or ``illumination-normalisation`` against lighting drift."""
        if stage not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing stage {stage!r}; choose one of {', '.join(PREPROCESSING)}")
        self.preprocessing = stage

    def set_cache(self, enabled: bool) -> None:
        """Answer repeated and near-duplicate inputs from the result cache (a morph command's ``cache``)."""
        if enabled and self._cache is None:
            self._cache = ResultCache()
        self._cache_on = bool(enabled)

    def _serve(self, batch: np.ndarray) -> Predictions:
        cache = self._cache if self._cache_on else None
        if cache is None:
            return self.server.infer(batch)
        labels, hit = cache.lookup(batch)
        if not hit.any():  # all the model's answers: they keep their logits (the confidence proxy reads them)
            pred = self.server.infer(batch)
            cache.store(batch, pred.labels)
            return pred
        if hit.all():
            current = self.server.current
            return Predictions(labels, np.zeros((len(batch), 0), np.float32), current.variant, current.precision,
                               current.sha256)
        pred = self.server.infer(batch[~hit])
        labels[~hit] = pred.labels
        cache.store(batch[~hit], pred.labels)
        return Predictions(labels, np.zeros((len(batch), 0), np.float32), pred.variant, pred.precision, pred.sha256)

    def _run(self) -> None:
        arrived, cursor = self._t0, 0
        while not self._stop.is_set():
            n = self.batch_size  # read once per batch: set_batch_size() may change it
            wait = arrived - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            idx = self._order[(cursor + np.arange(n)) % len(self._order)]
            cursor += n
            with self._lock:
                first_id = self._submitted
                self._submitted += n
                self._in_flight = n
            if time.monotonic() - arrived > max(1.0, 4 * self.deadline_s):
                # Far past its deadline (an overload, not one slow batch): shed unserved, so the backlog
                # drains instead of making every later request late too once the node can keep up again.
                self._shed(n, time.monotonic())
                arrived += n / self.rate
                continue
            if self.lighting is not None:
                self.inputs = self.lighting.at((time.monotonic() - self._t0) * self.time_scale)
            stage = PREPROCESSING[self.preprocessing]
            started = time.monotonic()
            try:
                batch = self.inputs.x[idx]
                pred = self._serve(batch if stage is None else stage(batch))
            except Exception:
                pred = None
            done = time.monotonic()
            with self._lock:
                self._busy.append((done, n, done - started))
            self._record(first_id, idx, arrived, done, pred)
            arrived += n / self.rate  # the next batch arrives once n more requests' worth of time has passed

    def _record(self, first_id: int, idx: np.ndarray, arrived: float, done: float, pred: Predictions | None):
        latency = done - arrived
        labels = self.inputs.y[idx]
        served = pred is not None and latency <= self.deadline_s
        n = len(idx)
        with self._lock:
            self._in_flight = 0
            second = self._seconds.setdefault(int(done - self._t0), [0, 0, None, None])
            if served:
                correct = int((pred.labels == labels).sum())
                self._served += n
                self._correct += correct
                counts = self._per_model.setdefault((pred.variant, pred.precision), ModelCounts())
                counts.served += n
                counts.correct += correct
                self._latency_sum += latency * n
                self._latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency)] += n
                with_logits = pred.logits.ndim == 2 and pred.logits.shape[1] > 0
                confidence = float(top1_probability(pred.logits).sum()) if with_logits else 0.0
                self._recent.append((done, n, latency * n, correct, confidence, len(pred.logits) if with_logits else 0))
                second[0] += n
            else:
                if pred is None:
                    self._errors += n
                else:
                    self._late += n
                second[1] += n
            if pred is not None:
                second[2], second[3] = pred.variant, pred.precision
            self._max_latency = max(self._max_latency, latency)
            self._prune(done)
            if self.keep_log:
                for i in range(n):
                    self._log.append(RequestRecord(
                        first_id + i, arrived, done, served, pred.variant if pred else None,
                        pred.precision if pred else None, int(labels[i]),
                        int(pred.labels[i]) if pred is not None else None))

    def _shed(self, n: int, now: float) -> None:
        with self._lock:
            self._in_flight = 0
            self._late += n
            self._seconds.setdefault(int(now - self._t0), [0, 0, None, None])[1] += n

    def _prune(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - 1.0:
            self._recent.popleft()
        while self._busy and self._busy[0][0] < now - 1.0:
            self._busy.popleft()
