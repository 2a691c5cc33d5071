"""``liquid fingerprint show --wfcommons``: the JSON interface keeps its fields and adds each edge's evidence."""

from __future__ import annotations

import json

from deploy.cli import main


def instance() -> dict:
    """prepare -> 6 parallel 'align' jobs (one task name) -> merge, with files; names carry _ID suffixes."""
    jobs = [f"align_ID00000{i + 2}" for i in range(6)]
    tasks = [{"name": "prepare_ID0000001", "id": "prepare_ID0000001", "parents": [], "children": jobs,
              "inputFiles": ["ref.fa"], "outputFiles": ["ref.idx"]}]
    tasks += [{"name": j, "id": j, "parents": ["prepare_ID0000001"], "children": ["merge_ID0000009"],
               "inputFiles": ["ref.idx", f"reads{i}.fq"], "outputFiles": [f"aln{i}.bam"]} for i, j in enumerate(jobs)]
    tasks.append({"name": "merge_ID0000009", "id": "merge_ID0000009", "parents": jobs, "children": [],
                  "inputFiles": [f"aln{i}.bam" for i in range(6)], "outputFiles": ["all.bam"]})
    runtimes = {"prepare_ID0000001": 5.0, "merge_ID0000009": 3.0, **{j: 20.0 + i for i, j in enumerate(jobs)}}
    return {"name": "align", "schemaVersion": "1.5", "workflow": {
        "specification": {"tasks": tasks, "files": []},
        "execution": {"tasks": [{"id": k, "runtimeInSeconds": v} for k, v in runtimes.items()]}}}


def show(capsys, path, *extra) -> dict:
    assert main(["fingerprint", "show", "wf", "--wfcommons", str(path), "--runs", "3", "--format", "json",
                 *extra]) == 0
    return json.loads(capsys.readouterr().out)["dag"]


def test_json_edges_keep_their_fields_and_say_how_they_are_known(tmp_path, capsys):
    path = tmp_path / "align.json"
    path.write_text(json.dumps(instance()))
    dag = show(capsys, path)
    assert [n["name"] for n in dag["nodes"]] == ["prepare", "align", "merge"]
    edges = {(e["source"], e["target"]): e for e in dag["edges"]}
    assert set(edges) == {("prepare", "align"), ("align", "merge")}
    for e in edges.values():
        assert {"source", "target", "kind", "probability", "evidence", "confidence"} <= set(e)
        assert e["evidence"] == "lineage" and e["confidence"] == 1.0
    assert edges[("align", "merge")]["artifacts"] == 6

    timing = show(capsys, path, "--no-lineage", "--seed", "3")
    assert {(e["source"], e["target"], e["evidence"]) for e in timing["edges"]} == {
        ("prepare", "align", "handover"), ("align", "merge", "handover")}
    assert all(0.5 <= e["confidence"] <= 1.0 for e in timing["edges"])
    assert show(capsys, path, "--no-lineage", "--seed", "3") == timing  # seeded: the same replay
    assert show(capsys, path, "--no-lineage", "--seed", "4") != timing
