"""Exporting a trained student: which model of a checkpoint (`export_choice`), the plain model
file and the MLflow model (`export_checkpoint`), and `ExportedDetector`, the detector plus what
inference needs (class names, ids, sizes). Its forward returns one tensor so that MLflow's
pyfunc serving can handle it: `[B,Q,4+C]` = normalised cxcywh boxes followed by the class
probabilities (sigmoid).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detr_models.config import model_config_from_dict
from orchestrator import registry
from orchestrator.deploy.cost import deploy_cost, describe_cost, parameters
from orchestrator.errors import UserInputError
from orchestrator.evaluation.curves import curves_figure
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.training import checkpoints
from orchestrator.training.model_source import load_model

logger = logging.getLogger("detrdistill")


class ExportedDetector(nn.Module):
    """`forward(images [B,3,H,W] ImageNet-normalised) -> [B,Q,4+C]` from the last stage."""

    def __init__(self, model: nn.Module, extra: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(extra.get("class_names", []))
        self.label_to_category = list(extra.get("label_to_category", []))
        self.eval_size = int(extra.get("eval_size", 800))
        self.max_size = int(extra.get("max_size", 1333))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        return torch.cat((out.boxes[-1], out.logits[-1].sigmoid()), dim=-1)


def best_checkpoint(result: Any, metric: str, mode: str) -> Any:
    """The best checkpoint of a Ray result by `metric` (the latest when none is scored)."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if scored:  # ties go to the later epoch
        sign = 1.0 if mode == "max" else -1.0
        return max(scored, key=lambda cm: (sign * cm[1][metric], cm[1].get("epoch", 0)))[0]
    return result.checkpoint


def export_checkpoint(
    spec: ExperimentSpec, checkpoint: Any, run_logger: Any, uri: str, run_id: str, folder: Path
) -> tuple[str | None, Path]:
    """Log the run's curves, the chosen model of `checkpoint` (a Ray Checkpoint) as a plain
    model file and as an MLflow model, registered under `mlflow.register_as`.
    The plain file is kept in `folder` (the run's own place under --storage).
    Returns (registered version or None, the local model file)."""
    export_dir = Path(folder)
    export_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as path:
        state = checkpoints.load_training_state(path)
        choice = export_choice(
            spec.checkpoint.export,
            state.get("last_eval", {}),
            (Path(path) / checkpoints.EMA_MODEL_FILE).is_file(),
        )
        source = checkpoints.EMA_MODEL_FILE if choice == "ema" else checkpoints.MODEL_FILE
        shutil.copy(Path(path) / source, export_dir / checkpoints.MODEL_FILE)
    model_file = export_dir / checkpoints.MODEL_FILE
    model, payload = load_model(str(model_file))
    prefix = "val_ema/" if choice == "ema" else "val/"  # the exported model's own scores
    scores = {
        k[len(prefix) :]: v for k, v in state.get("last_eval", {}).items() if k.startswith(prefix)
    }
    extra = dict(payload["extra"], val_AP=scores.get("AP"), exported=choice)
    config = model_config_from_dict(payload["config"])
    checkpoints.save_model_file(model_file, model, config, extra)
    run_logger.params({"exported_model": choice})
    logger.info(f"exporting the {choice} model of the chosen checkpoint")
    figure = curves_figure(
        {
            k: v
            for k, v in state["history"].items()
            if k in ("train/loss", "val/AP", "val/AP50", "val_ema/AP", "val_ema/AP50")
            or k.endswith("/instability")
        }
    )
    if figure is not None:
        run_logger.figure(figure, "curves.png")
    run_logger.artifact(model_file, "model")
    exported = ExportedDetector(model.eval(), extra).eval()
    size = spec.data.eval_size
    example = np.zeros((1, 3, size, size), dtype=np.float32)
    teacher = spec.teacher.source if spec.teacher is not None else "none"
    ap = extra.get("val_AP")
    description = (
        f"{spec.student.architecture} trained by detrdistill run {spec.name} (epoch "
        f"{extra.get('epoch')}, method {spec.distill.method}, teacher {teacher})"
        + (f"; val AP {ap:.3f}" if ap is not None else "")
    )
    params_m = parameters(model) / 1e6
    tags = {
        "method": spec.distill.method,
        "teacher": teacher,
        "run": spec.name,
        "architecture": spec.student.architecture,
        "params_M": f"{params_m:.3f}",
        "epoch": str(extra.get("epoch")),
    }
    for key in ("AP", "AP50", "AP75"):
        if scores.get(key) is not None:
            tags[f"val_{key}"] = f"{scores[key]:.4f}"
    if spec.mlflow.onnx:
        cost = _deploy(model, extra, export_dir, run_logger, run_id)
        if cost is not None:
            description += f". {describe_cost(cost)}; ONNX: runs:/{run_id}/onnx/model.onnx"
            tags.update(cost_tags(cost), onnx=f"runs:/{run_id}/onnx/model.onnx")
    version = registry.log_model(
        uri,
        run_id,
        exported,
        example,
        model_file,
        spec.mlflow.register_as,
        description,
        spec.mlflow.model_format,
        tags,
        model_name=spec.name,
        model_metrics={f"val/{k}": v for k, v in scores.items()},
        metrics_step=int(extra.get("epoch") or 0),
    )
    return version, model_file


def _deploy(
    model: nn.Module, extra: dict[str, Any], folder: Path, run_logger: Any, run_id: str
) -> dict[str, Any] | None:
    """The student as a checked ONNX file beside the model file, logged under `onnx/`, with
    its size and latency as `deploy/*` metrics; None (and a warning) when it cannot export."""
    path = folder / "model.onnx"
    try:
        cost = deploy_cost(model.eval(), extra, onnx_path=path)
    except UserInputError as err:
        logger.warning(f"no ONNX file for this model: {err}")
        return None
    run_logger.artifact(path, "onnx")
    numbers = {k: float(v) for k, v in cost.items() if isinstance(v, int | float)}
    run_logger.metrics({f"deploy/{k}": v for k, v in numbers.items()}, step=0)
    logger.info(f"exported the student to ONNX: {describe_cost(cost)}")
    return cost


def cost_tags(cost: dict[str, Any]) -> dict[str, str]:
    return {
        "params_M": f"{cost['params_M']:.3f}",
        "gflops": f"{cost['gflops']:.3f}",
        "onnx_cpu_ms": f"{cost['onnx_ms']:.2f}",
        "torch_cpu_ms": f"{cost['torch_ms']:.2f}",
        "latency_setup": f"batch 1, {cost['size']}x{cost['size']}, {cost['threads']} CPU threads",
        "latency_size": str(cost["size"]),
        "cpu_threads": str(cost["threads"]),
    }


def export_choice(export: str, last_eval: dict[str, float], has_ema: bool) -> str:
    """'student' or 'ema': what `checkpoint.export` picks from a checkpoint ('best' takes the
    EMA model only when its val AP beats the student's)."""
    if export == "ema" and not has_ema:
        raise ValueError("checkpoint.export is 'ema' but the checkpoint holds no EMA model")
    if export != "best" or not has_ema:
        return "ema" if export == "ema" else "student"
    student, ema = last_eval.get("val/AP"), last_eval.get("val_ema/AP")
    if ema is not None and (student is None or ema > student):
        return "ema"
    return "student"
