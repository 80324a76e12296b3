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

    from orchestrator import registry, tracking
    from orchestrator.launch.run import pin_teacher

    spec = tiny_spec(tmp_path)
    uri = spec.mlflow.tracking_uri
    client = MlflowClient(uri)
    experiment = tracking.ensure_experiment(uri, "teachers")
    client.create_registered_model("teacher")
    for _ in range(2):
        run = client.create_run(experiment)
        client.create_model_version("teacher", f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert registry.pin_model_version(uri, "models:/teacher/latest")[0] == "models:/teacher/2"
    client.set_registered_model_alias("teacher", "champion", "1")
    pinned, run_id = registry.pin_model_version(uri, "models:/teacher@champion")
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


def test_divergence_ends_the_run_failed_with_one_message(tmp_path, capsys, tiny_spec_dict):
    import yaml
    from mlflow.tracking import MlflowClient

    data = tiny_spec_dict(tmp_path, name="diverge", register_as=None, **{"optim.lr": 1e30})
    data["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    code = main(["run", str(spec), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "training diverged: the loss is nan at epoch 1 iteration" in line
    assert "Try a lower optim.lr (now 1e+30)" in line and "Traceback" not in err
    client = MlflowClient(data["mlflow"]["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("diverge").experiment_id])
    assert run.info.status == "FAILED"


def test_unusable_storage_is_refused_before_ray_starts(tmp_path, capsys, tiny_spec):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    spec = tiny_spec(tmp_path)
    with pytest.raises(UserInputError, match=r"--storage .*file/runs: cannot write there"):
        run_experiment(spec, storage_path=not_a_folder / "runs")
    blocked = spec.model_copy(deep=True)
    blocked.mlflow.tracking_uri = f"sqlite:///{not_a_folder}/mlflow.db"
    with pytest.raises(UserInputError, match=r"MLflow artifacts .*file/mlartifacts: cannot write"):
        run_experiment(blocked, storage_path=tmp_path / "runs")


def test_resuming_with_a_spec_that_trains_differently_is_refused(tmp_path, tiny_spec):
    from orchestrator.launch.resume import resume_changes, save_started_spec

    spec = tiny_spec(tmp_path, name="honest", workers=1)
    folder = tmp_path / "runs" / "honest-default"
    save_started_spec(folder, spec)
    (folder / "checkpoint_000000").mkdir()  # what Ray leaves after an epoch
    edited = tiny_spec(tmp_path, name="honest", workers=1, **{"optim.lr": 0.5})
    with pytest.raises(UserInputError) as info:
        run_experiment(edited, storage_path=tmp_path / "runs")  # refused before Ray starts
    message = str(info.value)
    assert "optim.lr: 0.001 -> 0.5" in message and "--restart" in message
    assert (folder / "checkpoint_000000").is_dir()  # nothing was deleted
    longer = tiny_spec(tmp_path, name="honest", workers=1, epochs=4)
    assert resume_changes(folder, longer, "honest-default") == ["train.epochs: 2 -> 4"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failed_run_leaves_no_local_ray_behind(tmp_path, tiny_spec):
    import ray

    from orchestrator.errors import RunFailed

    if ray.is_initialized():  # another test's Ray: start from none, as a user's process does
        ray.shutdown()
    spec = tiny_spec(
        tmp_path, name="diverge-ray", workers=1, register_as=None, **{"optim.lr": 1e30}
    )
    with pytest.raises(RunFailed, match="training diverged"):
        run_experiment(spec, storage_path=tmp_path / "runs")
    assert not ray.is_initialized()  # the local Ray this run started is shut down
