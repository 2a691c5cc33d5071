"""The model zoo: complete, intact, reproducible, accurate enough, cached, shown by the CLI."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from deploy import cli
from morph.ladder import PRECISIONS, VARIANTS
from morph.zoo import ZooMissingError, build_zoo, load_manifest, load_split, runtime
from morph.zoo.build import ACCURACY_FLOOR
from morph.zoo.manifest import sha256_file


@pytest.fixture(scope="session")
def zoo():
    """Built once into the shared cache (.cache/zoo or $LIQUID_ZOO_DIR) and reused across runs."""
    return build_zoo(progress=None)


def test_manifest_has_every_variant_in_every_precision(zoo):
    assert set(zoo.entries) == {(v, p) for v in VARIANTS for p in PRECISIONS}
    assert zoo.is_complete() and zoo.problems() == []
    reloaded = load_manifest(zoo.root)
    assert reloaded.entries == zoo.entries
    for e in zoo:
        assert zoo.model_path(e.variant, e.precision).is_absolute()
        assert e.params > 0 and e.flops > 0 and e.size_bytes > 0
        assert e.latency_ms_b1 > 0 and e.latency_ms_b32 > 0 and e.cpu_ms > 0


def test_files_match_their_checksums(zoo):
    for e in zoo:
        path = zoo.model_path(e.variant, e.precision)
        assert path.stat().st_size == e.size_bytes
        assert sha256_file(path) == e.sha256


def test_every_model_runs_and_reproduces_its_accuracy(zoo):
    test = load_split("test")
    for e in zoo:
        session = runtime.open_session(zoo.model_path(e.variant, e.precision))
        assert [i.name for i in session.get_inputs()] == ["input"]
        assert [o.name for o in session.get_outputs()] == ["logits"]
        for n in (1, 32):
            assert session.run(None, {"input": test.x[:n]})[0].shape == (n, 10)
        acc = runtime.accuracy(session, test.x, test.y)
        # Same ONNX Runtime, same single thread: the figure should come back
        # exactly; allow one test image in case kernels differ between builds.
        assert abs(acc - e.accuracy) <= 1 / len(test) + 1e-9, (e.variant, e.precision, acc, e.accuracy)
        assert acc > 0.9, (e.variant, e.precision, acc)


def test_students_keep_95_percent_of_the_teachers_accuracy(zoo):
    floor = ACCURACY_FLOOR * zoo.entry("transformer", "fp32").accuracy
    for e in zoo:
        if e.precision in ("fp32", "fp16"):
            assert e.accuracy >= floor, (e.variant, e.precision, e.accuracy, floor)
    assert zoo.info["accuracy_floor"]["below"] == []


def test_precisions_are_really_converted(zoo):
    def initializer_types(variant, precision):
        model = onnx.load(str(zoo.model_path(variant, precision)))
        return {t.data_type for t in model.graph.initializer}

    for v in VARIANTS:
        assert onnx.TensorProto.FLOAT16 in initializer_types(v, "fp16")
        assert onnx.TensorProto.INT8 in initializer_types(v, "int8")
        assert initializer_types(v, "fp32") <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
        assert zoo.entry(v, "fp16").size_bytes < zoo.entry(v, "fp32").size_bytes


def test_cost_falls_down_the_ladder_and_build_facts_are_recorded(zoo):
    flops = [zoo.entry(v, "fp32").flops for v in VARIANTS]
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == len(flops)
    info = zoo.info
    assert 0 < info["build_seconds"] < 300
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["onnxruntime"] == onnxruntime.__version__
    assert info["split"]["test"] == len(load_split("test"))
    rel = zoo.relative_cost("cpu_ms")
    assert rel["transformer"] == 1.0 and set(rel) == set(VARIANTS)


def test_cached_zoo_is_returned_without_rebuilding(zoo):
    mtimes = {e.path: (zoo.root / e.path).stat().st_mtime_ns for e in zoo}
    lines = []
    start = time.perf_counter()
    again = build_zoo(zoo.root, progress=lines.append)
    assert time.perf_counter() - start < 10
    assert again.info["built_at"] == zoo.info["built_at"]
    assert {e.path: (zoo.root / e.path).stat().st_mtime_ns for e in again} == mtimes
    assert len(lines) == 1 and "cached" in lines[0]


def test_a_tampered_file_is_reported(zoo, tmp_path):
    copy = tmp_path / "zoo"
    shutil.copytree(zoo.root, copy, ignore=shutil.ignore_patterns(".build.lock"))
    path = copy / zoo.entry("cnn", "int8").path
    path.write_bytes(path.read_bytes() + b"\0")
    problems = load_manifest(copy).problems()
    assert problems == ["cnn/int8: cnn-int8.onnx does not match its sha256"]


def test_zoo_show_prints_the_measured_table(zoo, capsys):
    assert cli.main(["zoo", "show", "--dir", str(zoo.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["variant", "precision", "params", "accuracy"]
    rows = [line.split() for line in out[1:16]]
    assert [(r[0], r[1]) for r in rows] == [(v, p) for v in VARIANTS for p in PRECISIONS]
    for row, e in zip(rows, zoo):
        assert row[3] == f"{e.accuracy:.4f}" and row[-1] == e.sha256[:12]
        assert row[6] == f"{e.flops:,}"
    assert "built" in out[16] and "onnxruntime" in out[16]


def test_zoo_show_json_is_the_manifest(zoo, capsys):
    assert cli.main(["zoo", "show", "--dir", str(zoo.root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["models"]) == 15 and data["format"] == zoo.info["format"]


def test_missing_zoo_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ZooMissingError, match="liquid zoo build"):
        load_manifest(tmp_path / "nowhere")
    assert cli.main(["zoo", "show", "--dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `liquid zoo build`" in err


def test_zoo_models_agree_with_their_fp32_source(zoo):
    """fp16 and int8 approximate the fp32 model, they do not replace it."""
    x = load_split("test").x
    for v in VARIANTS:
        ref = runtime.predict(runtime.open_session(zoo.model_path(v, "fp32")), x)
        for p in ("fp16", "int8"):
            agree = float(np.mean(runtime.predict(runtime.open_session(zoo.model_path(v, p)), x) == ref))
            assert agree >= 0.97, (v, p, agree)
