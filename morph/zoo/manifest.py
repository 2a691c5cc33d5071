"""The zoo's manifest: what was built, where it lies, its checksum and what it measured.

``manifest.json`` sits in the zoo directory next to the ONNX files; paths in it
are relative to that directory, so a zoo can be copied whole to a node. The
edge worker trusts a model file only when its sha256 matches the manifest.

>>> m = ZooManifest.from_dict({"format": FORMAT, "models": [
...     {"variant": "snn", "precision": "int8", "path": "snn-int8.onnx", "sha256": "ab" * 32,
...      "params": 7210, "size_bytes": 18775, "accuracy": 0.98, "latency_ms_b1": 0.03,
...      "latency_ms_b32": 0.08, "flops": 14208, "cpu_ms": 0.03}]}, root="/zoo")
>>> m.entry("snn", "int8").accuracy, str(m.model_path("snn", "int8"))
(0.98, '/zoo/snn-int8.onnx')
>>> m.is_complete(), len(m.missing())
(False, 14)
>>> m.input_shape, m.task.size
((32, 32), 32)
>>> try:
...     m.entry("snn", "fp16")
... except KeyError as err:
...     print(err)
no snn/fp16 model in the zoo at /zoo (it has: snn/int8); run `liquid zoo build --force`
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from morph.ladder import PRECISIONS, VARIANTS

#: Bumped when the models, their training or the manifest layout change, so an
#: old cache is rebuilt instead of trusted.
FORMAT = 3
MANIFEST = "manifest.json"
ENV_DIR = "LIQUID_ZOO_DIR"


class ZooMissingError(FileNotFoundError):
    """No built zoo where one was looked for."""


class ModelNotInZoo(KeyError):
    """A (variant, precision) the manifest has no entry for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def default_zoo_dir(profile: str = "full") -> Path:
    """The full zoo: ``$LIQUID_ZOO_DIR``, else ``<repo>/.cache/zoo`` (git-ignored);
    another build profile: ``<that>-<profile>`` beside it."""
    env = os.environ.get(ENV_DIR)
    root = Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "zoo"
    return root if profile == "full" else root.with_name(f"{root.name}-{profile}")


def build_digest() -> str:
    """A short digest of what a zoo build is made from: the zoo package's code, the ladder, and
    the versions of torch, onnx, onnxruntime and numpy.

    A directory named by it holds only builds of this code (`FORMAT` catches only the changes
    someone remembered to bump it for), so two checkouts of the same code can share one build: the
    tests' zoo is kept under it outside the clone, where a fresh clone on the same machine finds it.

    >>> len(build_digest()), build_digest() == build_digest()
    (16, True)
    """
    from importlib.metadata import version

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")) + [here.parent / "ladder.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for package in ("torch", "onnx", "onnxruntime", "numpy"):
        digest.update(f"{package}=={version(package)}\n".encode())
    return digest.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class ZooEntry:
    """One ONNX model of the zoo and what the build measured of it on this machine."""

    variant: str
    precision: str
    path: str               # relative to the zoo directory
    sha256: str
    params: int             # trainable parameters of the torch model
    size_bytes: int
    accuracy: float         # on the held-out test split, through ONNX Runtime
    latency_ms_b1: float    # median wall time of one call, batch 1
    latency_ms_b32: float   # median wall time of one call, batch 32
    flops: int              # per inference (one image), analytical
    cpu_ms: float           # process CPU time per batch-1 inference
    fp32_ops: tuple[str, ...] = ()  # fp16 only: op types kept in float32
    notes: str = ""
    torch_max_abs_diff: float = 0.0  # largest |logit| difference from the torch original on the test split
    torch_agreement: float = 1.0     # share of test frames where it predicts what the torch original does

    @property
    def key(self) -> tuple[str, str]:
        return self.variant, self.precision


@dataclass
class ZooManifest:
    root: Path
    entries: dict[tuple[str, str], ZooEntry]
    info: dict = field(default_factory=dict)  # build time, versions, split, machine

    # -- lookup -----------------------------------------------------------
    def entry(self, variant: str, precision: str) -> ZooEntry:
        try:
            return self.entries[(variant, precision)]
        except KeyError:
            have = ", ".join(f"{v}/{p}" for v, p in self.entries) or "nothing"
            raise ModelNotInZoo(f"no {variant}/{precision} model in the zoo at {self.root} (it has: {have}); "
                           f"run `liquid zoo build --force`") from None

    def model_path(self, variant: str, precision: str) -> Path:
        """Absolute path of the ONNX file for (variant, precision)."""
        return self.root / self.entry(variant, precision).path

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.entries

    def __iter__(self):
        """Entries in ladder order: variants heaviest first, then fp32, fp16, int8."""
        order = {k: i for i, k in enumerate((v, p) for v in VARIANTS for p in PRECISIONS)}
        return iter(sorted(self.entries.values(), key=lambda e: order.get(e.key, len(order))))

    # -- the task -----------------------------------------------------------
    @property
    def task(self):
        """The `morph.zoo.data.InspectionTask` the models were trained and scored on."""
        from morph.zoo.data import InspectionTask

        return InspectionTask.from_dict(self.info.get("task", {}))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input, without the batch axis (what a caller feeds, per request)."""
        shape = self.info.get("task", {}).get("input", {}).get("shape")
        return tuple(shape[1:]) if shape else (self.task.size, self.task.size)

    # -- integrity --------------------------------------------------------
    def missing(self) -> list[tuple[str, str]]:
        return [(v, p) for v in VARIANTS for p in PRECISIONS if (v, p) not in self.entries]

    def is_complete(self) -> bool:
        return self.info.get("format") == FORMAT and not self.missing()

    def problems(self) -> list[str]:
        """Why this manifest can't be trusted as is: missing entries or files, checksum mismatches."""
        found = [f"stale manifest format {self.info.get('format')} (current {FORMAT})"] \
            if self.info.get("format") != FORMAT else []
        found += [f"{v}/{p}: not built" for v, p in self.missing()]
        for e in self:
            path = self.root / e.path
            if not path.is_file():
                found.append(f"{e.variant}/{e.precision}: {e.path} is missing")
            elif sha256_file(path) != e.sha256:
                found.append(f"{e.variant}/{e.precision}: {e.path} does not match its sha256")
        return found

    # -- derived figures ----------------------------------------------------
    def relative_cost(self, metric: str = "cpu_ms", precision: str = "fp32") -> dict[str, float]:
        """``metric`` of each variant at ``precision`` relative to the transformer
        (e.g. to scale a thermal model's dynamic power by measured cost)."""
        base = getattr(self.entry("transformer", precision), metric)
        return {v: getattr(self.entry(v, precision), metric) / base for v in VARIANTS if (v, precision) in self}

    # -- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict:
        models = []
        for e in self:
            row = asdict(e)
            row["fp32_ops"] = list(e.fp32_ops)
            models.append(row)
        return {**self.info, "models": models}

    @classmethod
    def from_dict(cls, data: dict, root: str | Path) -> ZooManifest:
        known = {f.name for f in fields(ZooEntry)}
        entries = {}
        for row in data.get("models", []):
            row = {k: v for k, v in row.items() if k in known}
            row["fp32_ops"] = tuple(row.get("fp32_ops", ()))
            entry = ZooEntry(**row)
            entries[entry.key] = entry
        info = {k: v for k, v in data.items() if k != "models"}
        return cls(Path(root), entries, info)

    def save(self) -> Path:
        """Write ``manifest.json`` atomically (readers never see half a file)."""
        path = self.root / MANIFEST
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path


def load_manifest(zoo_dir: str | Path | None = None) -> ZooManifest:
    """The manifest of the zoo in ``zoo_dir`` (default: `default_zoo_dir`).

    Raises `ZooMissingError` when there is none; it does not verify checksums
    (see `ZooManifest.problems`), so loading stays cheap."""
    root = Path(zoo_dir) if zoo_dir is not None else default_zoo_dir()
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ZooMissingError(f"no model zoo at {root}: run `liquid zoo build`") from None
    except json.JSONDecodeError as err:
        raise ZooMissingError(f"unreadable zoo manifest {path} ({err}): run `liquid zoo build --force`") from None
    return ZooManifest.from_dict(data, root)
