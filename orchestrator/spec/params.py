"""A spec as MLflow records it: the full YAML artifact and flat dotted parameters."""

from __future__ import annotations

import json
from typing import Any

import yaml

from orchestrator.spec.sections import ExperimentSpec

MAX_PARAM_CHARS = 500  # MLflow rejects longer parameter values
_TEACHER_KEYS = ("architecture", "backbone", "hidden_dim", "decoder_layers", "num_queries")


def spec_to_yaml(spec: ExperimentSpec) -> str:
    """The full spec, defaults included, as YAML (the MLflow artifact; loads back equal)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def flatten_params(spec: ExperimentSpec) -> dict[str, str]:
    """Dotted keys to string values for MLflow params; lists compact, values cut to 500 chars."""
    return _flat(spec.model_dump(mode="json"))


def run_params(spec: ExperimentSpec, num_classes: int | None = None) -> dict[str, str]:
    """The MLflow params of a run: the spec as it applies, not every default of every
    section. Left out: settings that take no effect (crop sizes without `crop`, RT-DETR
    augmentation settings with another augment, GPUs per worker without `use_gpu`, the
    settings of a disabled distillation term), unset (None) values, and where this machine
    keeps things (tracking URI, cache folder). `num_classes` is the dataset's real count.
    The trained network's settings are `model.*` (the spec's `student`, which is the teacher
    in a teacher's own run). The full spec is the run's `spec.yaml` artifact."""
    data = spec.model_dump(mode="json")
    data["mlflow"].pop("tracking_uri", None)
    data["data"]["source"].pop("cache_dir", None)
    if not data["data"].get("crop"):
        for key in ("crop_size", "crop_resize"):
            data["data"].pop(key, None)
    if data["data"].get("augment") != "rtdetr":
        data["data"].pop("rtdetr", None)
    if not data["scaling"].get("use_gpu"):
        data["scaling"].pop("gpus_per_worker", None)
    for name, term in (data.get("distill") or {}).items():
        if isinstance(term, dict) and term.get("enabled") is False:
            data["distill"][name] = {"enabled": False}
    teacher_model = (data.get("teacher") or {}).get("model")
    if isinstance(teacher_model, dict):  # the teacher's identity, not every one of its settings
        data["teacher"]["model"] = {k: v for k, v in teacher_model.items() if k in _TEACHER_KEYS}
    if num_classes is not None:
        data["student"]["num_classes"] = num_classes
        data["data"]["num_classes"] = num_classes
    data = {("model" if k == "student" else k): v for k, v in data.items()}
    return {k: v for k, v in _flat(data).items() if v != "None"}


def _flat(tree: Any) -> dict[str, str]:
    flat: dict[str, str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
            return
        if isinstance(value, list | dict):
            text = json.dumps(value, separators=(",", ":"), default=str)
        else:
            text = str(value)
        flat[prefix] = text[:MAX_PARAM_CHARS]

    visit("", tree)
    return flat
