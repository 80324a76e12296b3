"""A spec as MLflow records it: the full YAML artifact and flat dotted parameters."""

from __future__ import annotations

import json
from typing import Any

import yaml

from orchestrator.spec.sections import ExperimentSpec

MAX_PARAM_CHARS = 500  # MLflow rejects longer parameter values


def spec_to_yaml(spec: ExperimentSpec) -> str:
    """The full spec, defaults included, as YAML (the MLflow artifact; loads back equal)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def flatten_params(spec: ExperimentSpec) -> dict[str, str]:
    """Dotted keys to string values for MLflow params; lists compact, values cut to 500 chars."""
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

    visit("", spec.model_dump(mode="json"))
    return flat
