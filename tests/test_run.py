"""End to end: spec -> Ray Train -> MLflow -> registered model, with real Ray and MLflow."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.cli.main import main
from orchestrator.errors import UserInputError
from orchestrator.launch.run import run_experiment
from orchestrator.training.checkpoints import read_model_file
from orchestrator.training.model_source import load_model


def test_local_mode_run_tracks_and_registers(tmp_path, tiny_spec):
    # the defaults: a pt2 MLflow model and a checked ONNX file with size and latency
    spec = tiny_spec(tmp_path, **{"mlflow.model_format": "pt2", "mlflow.onnx": True})
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("detrdistill-*"))
    result = run_experiment(spec, storage_path=tmp_path / "runs")
    # the exported file stays in the run's own folder; nothing is left in the temp directory
    assert result.model_file == tmp_path / "runs" / "tiny-default" / "export" / "model.pt"
    assert set(temp.glob("detrdistill-*")) == before
    # tracking where this run did is not left set for the rest of the process
    assert os.environ.get("MLFLOW_TRACKING_URI") is None
    client = MlflowClient(spec.mlflow.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == "0.001" and params["model.architecture"] == "detr"
    # the spec as it applies: the real class count, nothing that takes no effect or is local
    assert params["model.num_classes"] == "3" and params["data.num_classes"] == "3"
    for absent in ("mlflow.tracking_uri", "data.crop_size", "scaling.gpus_per_worker", "tune"):
        assert absent not in params
    assert not any(value == "None" for value in params.values())
    assert run.data.tags["method"] == "none" and run.data.tags["architecture"] == "detr"
    assert run.data.tags["role"] == "trained" and run.info.run_name == "tiny"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "tiny" in experiment.tags["mlflow.note.content"]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    shapes = next(iter(inputs)).split("/")[0]  # the generated set's folder, shapes-<hash>
    assert shapes.startswith("shapes-") and sorted(inputs) == [f"{shapes}/train", f"{shapes}/val"]
    train_input = inputs[f"{shapes}/train"]
    assert json.loads(train_input.dataset.profile)["images"] == 8
    assert train_input.tags[0].value == "training"
    # the epoch is every chart's step, not a chart of its own; detection-only loss to compare
    assert "epoch" not in run.data.metrics
    assert run.data.metrics["train/loss_det"] == pytest.approx(run.data.metrics["train/loss"])
    assert run.data.metrics["best/val_AP"] == max(
        m.value for m in client.get_metric_history(run.info.run_id, "val/AP")
    )
    assert run.data.metrics["model/params_M"] > 0
    # system metrics on: a run shorter than one 10 s sampling interval still gets a sample
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    # two evaluations (the exported model's metrics repeat its epoch's point, on the model)
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val/AP50")} == {1, 2}
    assert "train/loss_giou_s1" in run.data.metrics and "train/images_per_s" in run.data.metrics
    assert [
        m.step for m in client.get_metric_history(run.info.run_id, "stability/gt_flip_rate")
    ] == [2]
    assert len(client.get_metric_history(run.info.run_id, "stability/cross_stage_consistency")) == 2
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "curves.png", "model", "images", "evaluation", "onnx"} <= top
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/pr_curve.png", "evaluation/per_class_ap.json"} <= evaluation
    assert [a.path for a in client.list_artifacts(run.info.run_id, "onnx")] == ["onnx/model.onnx"]
    version = client.get_model_version("tiny-model", "1")
    assert float(version.tags["params_M"]) == pytest.approx(
        sum(p.numel() for p in load_model(str(result.model_file))[0].parameters()) / 1e6, abs=1e-3
    )
    assert float(version.tags["gflops"]) > 0 and float(version.tags["onnx_cpu_ms"]) > 0
    assert version.tags["onnx"] == f"runs:/{result.mlflow_run_id}/onnx/model.onnx"
    assert version.tags["method"] == "none" and "val_AP" in version.tags
    assert "val_AP50" in version.tags and version.tags["epoch"] == "2"
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert logged.name == "tiny" and "val/AP" in {m.key for m in logged.metrics}
    assert "GFLOPs at 64x64" in version.description and "onnxruntime" in version.description
    assert str(client.get_model_version_by_alias("tiny-model", "best").version) == "1"
    assert run.data.metrics["deploy/params_M"] == pytest.approx(
        float(version.tags["params_M"]), abs=1e-3
    )
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    # one mosaic per evaluation, as a step image (a PNG and its compressed preview each)
    steps = sorted({int(p.split("+step+")[1].split("+")[0]) for p in images if p.endswith(".png")})
    assert steps == [1, 2] and all("predictions+step+" in p for p in images)
    assert result.registered_version == "1"
    # the plain model file rebuilds with weights_only loading and no pickled code
    payload = read_model_file(result.model_file)
    assert payload["config"]["architecture"] == "detr" and payload["extra"][
        "label_to_category"
    ] == [1, 3, 7]

    # the registered student loads in a fresh process and predicts exactly as before export
    model, _ = load_model(str(result.model_file))
    torch.manual_seed(1)
    images = torch.randn(1, 3, 64, 64)  # the pt2 model's input example: batch 1, eval size
    with torch.no_grad():
        out = model.eval()(images)
    expected = torch.cat((out.boxes[-1], out.logits[-1].sigmoid()), dim=-1)
    torch.save(images, tmp_path / "images.pt")
    script = textwrap.dedent(
        f"""
        import mlflow.pytorch, torch
        mlflow.set_tracking_uri({spec.mlflow.tracking_uri!r})
        model = mlflow.pytorch.load_model("models:/tiny-model/1")
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "images.pt")!r})), {str(tmp_path / "out.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=1e-6, rtol=0)


def test_model_sources_eval_predict_and_mismatch(tmp_path, capsys, tiny_spec):
    spec = tiny_spec(tmp_path, epochs=1, register_as="teacher")
    result = run_experiment(spec, storage_path=tmp_path / "runs")
    uri = spec.mlflow.tracking_uri
    reference, _ = load_model(str(result.model_file))
    sources = [
        "models:/teacher/1",
        f"runs:/{result.mlflow_run_id}/model/model.pt",
        str(result.model_file),
    ]
    for source in sources:
        model, _ = load_model(source, tracking_uri=uri)
        for (name, a), b in zip(
            reference.state_dict().items(), model.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (source, name)
    wrong = spec.student.model_copy(update={"hidden_dim": 64}).with_classes(3)
    with pytest.raises(
        UserInputError, match=r"do not fit the configured model; .*shape mismatch: "
    ):
        load_model("models:/teacher/1", wrong, tracking_uri=uri)
    with pytest.raises(UserInputError, match="cannot fetch models:/nope/1"):
        load_model("models:/nope/1", tracking_uri=uri)
    with pytest.raises(UserInputError, match="expected runs:/<run id>/<artifact path>"):
        load_model("runs:/abc", tracking_uri=uri)

    # eval and predict work from a registry source
    root = next((tmp_path / "cache").glob("shapes-*"))
    args = ["--model", "models:/teacher/1", "--tracking-uri", uri]
    assert main(["eval", *args, "--data", str(root), "--results", str(tmp_path / "res.json")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) >= {"AP", "AP50"}
    results = json.loads((tmp_path / "res.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 3, 7}
    images = sorted((root / "val").glob("*.png"))[:2]
    out = tmp_path / "pred"
    assert main(["predict", *args, *map(str, images), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [p.name for p in images]
    predictions = json.loads((out / "predictions.json").read_text())
    assert [p["file_name"] for p in predictions] == [p.name for p in images]
    for image in predictions:
        assert 0 < len(image["detections"]) <= 100
        assert {d["category"] for d in image["detections"]} <= {"circle", "square", "triangle"}
    assert main(["predict", *args, str(tmp_path / "nope.png"), "--out", str(out)]) == 2


def test_run_command_rejects_class_mismatch_before_starting(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: mismatch\n"
        "data: {source: {kind: synthetic, train_images: 2, val_images: 1, image_size: 64}}\n"
        "student: {architecture: detr, backbone: tiny, num_classes: 5}\n"
    )
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "student.num_classes: 5 but the dataset has 3 classes" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, ray_local, monkeypatch, tiny_spec):
    # uninterrupted: one real Ray Train worker, two epochs
    clean = tiny_spec(tmp_path / "a", name="clean", workers=1, register_as=None)
    clean_result = run_experiment(clean, storage_path=tmp_path / "a" / "runs")
    assert clean_result.metrics["epoch"] == 2

    spec = tiny_spec(
        tmp_path / "b",
        name="crashy",
        workers=1,
        register_as="crashy",
        **{"scaling.max_failures": 0},  # the crash ends the run: resume by running again
    )
    monkeypatch.setenv("DETRDISTILL_FAULT_AFTER_EPOCH", "1")
    with pytest.raises(Exception, match="fault injected after epoch 1"):
        run_experiment(spec, storage_path=tmp_path / "b" / "runs")
    client = MlflowClient(spec.mlflow.tracking_uri)
    (crashed,) = client.search_runs([client.get_experiment_by_name("crashy").experiment_id])
    assert crashed.info.status == "FAILED"
    # the same command again continues at epoch 2 in the same MLflow run
    resumed = run_experiment(spec, storage_path=tmp_path / "b" / "runs")
    assert resumed.mlflow_run_id == crashed.info.run_id
    steps = [m.step for m in client.get_metric_history(resumed.mlflow_run_id, "train/loss")]
    assert steps == [1, 2]
    a = read_model_file(clean_result.model_file)["state_dict"]
    b = read_model_file(resumed.model_file)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), (
        "resumed weights differ from the uninterrupted run"
    )
    assert json.dumps(clean_result.metrics["val/AP"]) == json.dumps(resumed.metrics["val/AP"])
    assert resumed.registered_version == "1"
    # num_to_keep 1: the best checkpoint and the latest, at most two on disk
    folder = tmp_path / "b" / "runs" / "crashy-default"
    assert len([d for d in folder.glob("checkpoint_*") if d.is_dir()]) <= 2
    # the finished run, run again: nothing trains, nothing is logged or registered twice
    again = run_experiment(spec, storage_path=tmp_path / "b" / "runs")
    assert again.mlflow_run_id == resumed.mlflow_run_id and again.registered_version is None
    steps = [m.step for m in client.get_metric_history(resumed.mlflow_run_id, "train/loss")]
    assert steps == [1, 2]
    assert len(client.search_model_versions("name = 'crashy'")) == 1


@pytest.mark.slow
def test_a_killed_worker_recovers_inside_the_same_run(tmp_path, ray_local, monkeypatch, tiny_spec):
    spec = tiny_spec(tmp_path, name="killed", workers=1, register_as=None, epochs=3)
    assert spec.scaling.max_failures == 2  # the default restarts a dead worker group
    monkeypatch.setenv("DETRDISTILL_FAULT_AFTER_EPOCH", "kill:1")  # SIGKILL after epoch 1
    result = run_experiment(spec, storage_path=tmp_path / "runs")
    assert result.metrics["epoch"] == 3
    client = MlflowClient(spec.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert run.info.run_id == result.mlflow_run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [1, 2, 3]  # each epoch logged once, none repeated after the restart
    # three checkpoints written, the best and the latest kept (checkpoint.num_to_keep: 1)
    kept = [d for d in (tmp_path / "runs" / "killed-default").glob("checkpoint_*") if d.is_dir()]
    assert 1 <= len(kept) <= 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_closes_the_run_as_killed_and_exits_130(tmp_path, tiny_spec_dict):
    import signal
    import time

    import yaml

    data = tiny_spec_dict(tmp_path, name="interrupted", workers=1, epochs=100, register_as=None)
    data["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    bin_dir = Path(sys.executable).parent
    process = subprocess.Popen(
        [str(bin_dir / "detrdistill"), "run", str(spec), "--storage", str(tmp_path / "runs")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    client = MlflowClient(data["mlflow"]["tracking_uri"])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait until the first epoch is logged
        experiment = (
            client.get_experiment_by_name("interrupted") if process.poll() is None else None
        )
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
            break
        time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "stopped; the MLflow run is closed as KILLED" in err
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED"
