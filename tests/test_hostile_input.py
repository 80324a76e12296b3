"""Hostile input is refused before anything is touched: run names that would be paths or
break MLflow filters, YAML alias bombs, specs that would train nothing."""

from __future__ import annotations

import time

import pytest

from orchestrator.cli.main import main
from orchestrator.errors import UserInputError
from orchestrator.launch.run import run_experiment

BOMB = "\n".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(
            f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]"
            for a, b in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "name: bomb",
        "student: {architecture: detr}",
    ]
)


@pytest.mark.parametrize("name", ["../../../victim", "a/b", "x'y", "..", ".hidden", "a" * 200])
def test_unsafe_run_names_are_refused_before_anything_is_touched(tmp_path, capsys, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    storage = tmp_path / "runs" / "a" / "b"
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nstudent: {architecture: detr}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(spec), "--run-name", name, "--restart", "--storage", str(storage)])
    assert exit_info.value.code == 2
    assert "run name" in capsys.readouterr().err
    assert (victim / "keep").exists() and not storage.exists()


def test_the_library_refuses_unsafe_run_names_too(tmp_path, tiny_spec):
    with pytest.raises(UserInputError, match=r"run name '\.\./x'"):
        run_experiment(tiny_spec(tmp_path), run_name="../x", storage_path=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(BOMB)
    started = time.monotonic()
    assert main(["validate", str(spec)]) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "bomb.yaml: refused: the document expands to 490,329,070 nodes" in err
    recursive = tmp_path / "loop.yaml"
    recursive.write_text("name: &n [*n]\n")
    assert main(["validate", str(recursive)]) == 2
    assert "refers to itself" in capsys.readouterr().err


def test_a_floating_teacher_reference_is_pinned_to_one_version(tmp_path, tiny_spec):
    from mlflow.tracking import MlflowClient

    from orchestrator import tracking
    from orchestrator.launch.run import pin_teacher

    spec = tiny_spec(tmp_path)
    uri = spec.mlflow.tracking_uri
    client = MlflowClient(uri)
    experiment = tracking.ensure_experiment(uri, "teachers")
    client.create_registered_model("teacher")
    for _ in range(2):
        run = client.create_run(experiment)
        client.create_model_version("teacher", f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert tracking.pin_model_version(uri, "models:/teacher/latest")[0] == "models:/teacher/2"
    client.set_registered_model_alias("teacher", "champion", "1")
    pinned, run_id = tracking.pin_model_version(uri, "models:/teacher@champion")
    assert (
        pinned == "models:/teacher/1" and run_id == client.get_model_version("teacher", "1").run_id
    )
    teacher = {"model": spec.student.model_dump(), "weights": "models:/teacher/latest"}
    with_teacher = spec.model_copy(
        update={"teacher": spec.model_validate({**spec.model_dump(), "teacher": teacher}).teacher}
    )
    assert pin_teacher(with_teacher).teacher.weights == "models:/teacher/2"
    # a resumed run keeps the version it started with, whatever `latest` is now
    kept = pin_teacher(with_teacher, recorded="models:/teacher/1")
    assert kept.teacher.weights == "models:/teacher/1"
