"""`detrdistill compare` in MLflow: one parent run in `comparisons` with the teacher, baseline
and distilled runs as its children, the table logged as a table, tags linking runs and
registered models; a second comparison replaces the first and reuses the registered teacher."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.launch.compare import roles, run_comparison


def _specs(tmp_path, tiny_spec):
    teacher = tiny_spec(tmp_path, name="cmp-teacher", epochs=1, register_as="cmp-teacher")
    baseline = tiny_spec(tmp_path, name="cmp-baseline", epochs=1, register_as="cmp-baseline")
    teacher_section = {
        "model": teacher.student.model_dump(),
        "weights": "models:/cmp-teacher/latest",
    }
    distilled = tiny_spec(
        tmp_path,
        name="cmp-distilled",
        epochs=1,
        register_as="cmp-distilled",
        teacher=teacher_section,
        **{"distill.method": "detrdistill"},
    )
    return teacher, baseline, distilled


def test_compare_is_one_parent_run_with_its_children(tmp_path, tiny_spec):
    teacher, baseline, distilled = _specs(tmp_path, tiny_spec)
    rows = run_comparison(teacher, [baseline, distilled], storage=tmp_path / "runs", cost=False)
    assert [row.role for row in rows] == ["teacher", "baseline", "distilled"]
    client = MlflowClient(teacher.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("comparisons")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert sorted(children) == ["baseline", "distilled", "teacher"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {parent.info.run_id}
    # the parent links its runs and the registered models, and says what was compared
    tags = parent.data.tags
    for role, child in children.items():
        assert tags[f"run.{role}"] == child.info.run_id and child.data.tags["role"] == role
    assert tags["model.distilled"] == "models:/cmp-distilled/1"
    assert parent.data.params["distilled.method"] == "detrdistill"
    assert parent.data.params["baseline.spec"] == "cmp-baseline"
    # the table, as MLflow's table artifact and as markdown, always in the artifact store
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.json", "comparison.md"} <= artifacts
    local = client.download_artifacts(parent.info.run_id, "comparison.json", str(tmp_path))
    table = json.loads(Path(local).read_text())
    assert table["columns"][:4] == ["role", "model", "AP", "AP50"]
    assert [row[0] for row in table["data"]] == ["teacher", "baseline", "distilled"]
    assert parent.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    # the numbers are the table's and the children's: no charts of its own on the parent
    assert parent.data.metrics == {} and table["data"][2][2] == rows[2].ap
    # under the table: the distilled student's AP difference with its bootstrap interval
    local = client.download_artifacts(parent.info.run_id, "comparison.md", str(tmp_path))
    text = Path(local).read_text()
    assert f"distilled - baseline: AP {rows[2].ap - rows[1].ap:+.3f}, 95% interval" in text
    assert "One training seed" in text

    # again: the registered teacher is reused, the earlier comparison is replaced
    rows = run_comparison(teacher, [baseline, distilled], storage=tmp_path / "runs", cost=False)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 4
    (reused,) = [r for r in runs if r.info.run_name == "teacher"]
    assert reused.data.tags["model"] == "models:/cmp-teacher/1"
    assert reused.data.metrics["val/AP"] == rows[0].ap


def test_child_runs_get_unique_role_names(tmp_path, tiny_spec):
    plain = tiny_spec(tmp_path, name="a")
    other = tiny_spec(tmp_path, name="b")
    seeded = tiny_spec(tmp_path, name="b", **{"seed": 1})
    assert roles([plain]) == ["baseline"]
    assert roles([plain, other]) == ["baseline-a", "baseline-b"]
    assert roles([other, seeded]) == ["baseline-b-seed0", "baseline-b-seed1"]
