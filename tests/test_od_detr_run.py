"""OD-DETR through the training loop and `detrdistill run`: EMA evaluated, tracked, checkpointed,
resumed exactly and exported (real Ray Train in local mode, real MLflow)."""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.launch.run import run_experiment
from orchestrator.training import checkpoints
from orchestrator.training.fit import fault_injector, run_training
from orchestrator.training.reporters import LocalReporter

OD = {"method": "od_detr", "ema": {"decay": 0.9}}


@pytest.fixture
def od_spec(tiny_spec):
    """The tiny spec with OD-DETR on a DAB-DETR student: `od_spec(base, **dotted)`."""

    def build(base: Path, **overrides):
        return tiny_spec(
            base,
            register_as=None,
            distill=OD,
            **{"student.architecture": "dab_detr", "train.stability_probe_images": 4, **overrides},
        )

    return build


def test_resumed_run_has_the_same_ema_as_an_uninterrupted_one(tmp_path, od_spec):
    spec = od_spec(tmp_path)
    clean = LocalReporter(tmp_path / "clean")
    run_training(spec, clean)
    crashed = LocalReporter(tmp_path / "crash")
    with pytest.raises(RuntimeError, match="fault injected"):
        run_training(spec, crashed, fault=fault_injector("1"))
    resumed = LocalReporter(tmp_path / "resumed", resume=tmp_path / "crash" / "epoch_0001")
    run_training(spec, resumed)
    a = checkpoints.load_training_state(tmp_path / "clean" / "epoch_0002")["objective"]
    b = checkpoints.load_training_state(tmp_path / "resumed" / "epoch_0002")["objective"]
    assert int(a["ema.updates"]) == int(b["ema.updates"]) == 4  # 2 epochs x 2 iterations
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ema_a = checkpoints.read_model_file(tmp_path / "clean" / "epoch_0002" / "ema_model.pt")
    ema_b = checkpoints.read_model_file(tmp_path / "resumed" / "epoch_0002" / "ema_model.pt")
    assert all(torch.equal(v, ema_b["state_dict"][k]) for k, v in ema_a["state_dict"].items())
    # the EMA is not the student
    student = checkpoints.read_model_file(tmp_path / "clean" / "epoch_0002" / "model.pt")
    assert not all(torch.equal(v, student["state_dict"][k]) for k, v in ema_a["state_dict"].items())
    # the EMA's metrics and its instability are reported, and match after the resume
    last = clean.history[-1]
    for key in ("val_ema/AP", "stability_ema/instability", "stability/teacher_agreement"):
        assert key in last and last[key] == resumed.history[-1][key]


def test_od_detr_run_tracks_both_models_and_exports_the_ema(tmp_path, od_spec):
    spec = od_spec(tmp_path, **{"checkpoint.export": "ema", "mlflow.register_as": "od-model"})
    result = run_experiment(spec, storage_path=tmp_path / "runs")
    client = MlflowClient(spec.mlflow.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["method"] == "od_detr"
    assert len(client.get_metric_history(run.info.run_id, "val_ema/AP")) == 2
    assert len(client.get_metric_history(run.info.run_id, "stability_ema/instability")) == 1
    assert "distill/init_cls_s0" in run.data.metrics
    assert "distill/match_agreement" in run.data.metrics
    assert run.data.params["exported_model"] == "ema"
    payload = checkpoints.read_model_file(result.model_file)
    assert payload["extra"]["exported"] == "ema"
    assert payload["extra"]["val_AP"] == result.metrics["val_ema/AP"]
    assert result.registered_version == "1"
