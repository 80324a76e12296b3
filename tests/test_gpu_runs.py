"""Whole runs on GPUs (`pytest -m gpu`, `make gpu-check`); skipped without CUDA: a 1-GPU Ray
Train run with AMP bf16, DDP over every visible GPU, and a TensorRT engine from the exported
ONNX file where `trtexec` is installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.launch.run import run_experiment

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _gpu_spec(tiny_spec, tmp_path, workers, **overrides):
    return tiny_spec(
        tmp_path,
        name=f"gpu{workers}",
        workers=workers,
        register_as=f"gpu{workers}",
        **{"scaling.use_gpu": True, "scaling.gpus_per_worker": 1, "train.amp": True},
        **overrides,
    )


def test_one_gpu_ray_train_run_with_bf16_autocast(tmp_path, tiny_spec):
    spec = _gpu_spec(tiny_spec, tmp_path, 1, **{"mlflow.onnx": True})
    result = run_experiment(spec, storage_path=tmp_path / "runs")
    run = MlflowClient(spec.mlflow.tracking_uri).get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and result.registered_version == "1"
    assert all(torch.isfinite(torch.tensor(v)) for v in run.data.metrics.values())
    assert (result.model_file.parent / "model.onnx").is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more GPUs")
def test_ddp_on_every_visible_gpu(tmp_path, tiny_spec):
    workers = torch.cuda.device_count()
    spec = _gpu_spec(tiny_spec, tmp_path, workers, **{"data.batch_size": 2})
    result = run_experiment(spec, storage_path=tmp_path / "runs")
    assert result.metrics["epoch"] == spec.train.epochs
    assert result.metrics["val/AP"] >= 0


@pytest.mark.skipif(shutil.which("trtexec") is None, reason="needs TensorRT's trtexec")
def test_tensorrt_builds_an_fp16_engine_from_the_exported_onnx(tmp_path, tiny_spec):
    spec = _gpu_spec(tiny_spec, tmp_path, 1, **{"mlflow.onnx": True})
    result = run_experiment(spec, storage_path=tmp_path / "runs")
    onnx_file = result.model_file.parent / "model.onnx"
    engine = tmp_path / "student.plan"
    done = subprocess.run(
        ["trtexec", f"--onnx={onnx_file}", "--fp16", f"--saveEngine={engine}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert engine.stat().st_size > 0
