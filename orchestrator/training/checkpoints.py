"""Checkpoint files: the plain model file (config + state dict, loadable with
`torch.load(weights_only=True)` and no pickled code) and the training state used to resume."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detr_models.config import ModelConfig
from orchestrator.errors import UserInputError

MODEL_FORMAT = "detrdistill-model/1"
MODEL_FILE = "model.pt"
EMA_MODEL_FILE = "ema_model.pt"  # OD-DETR runs: the EMA teacher, same format
STATE_FILE = "state.pt"


def save_model_file(
    path: str | Path, model: nn.Module, config: ModelConfig, extra: dict[str, Any] | None = None
) -> Path:
    """Write `{format, config, state_dict, extra}` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": MODEL_FORMAT,
        "config": config.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Load a plain model file safely; a foreign or broken file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserInputError(
            f"{path}: not a loadable weights file ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        return payload
    if isinstance(payload, dict) and all(torch.is_tensor(v) for v in payload.values()):
        return {"format": None, "config": None, "state_dict": payload, "extra": {}}
    raise UserInputError(
        f"{path}: not a detrdistill model file (expected format {MODEL_FORMAT!r} or a bare state dict)"
    )


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; a mismatch lists the missing, unexpected and wrongly shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        ):
            if keys:
                more = f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""
                parts.append(f"{label}: {', '.join(keys[:6])}{more}")
        raise UserInputError(
            f"weights from {source} do not fit the configured model; "
            + "; ".join(parts)
            + ". Make the model config match the one the weights were trained with."
        )
    model.load_state_dict(state_dict)


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write the resume state (model, optimizer, scheduler, epoch, RNG, run ids, history)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    return directory


def load_training_state(directory: str | Path) -> dict[str, Any]:
    # our own file, written by save_training_state: it holds RNG tuples and numpy arrays,
    # which weights_only=True rejects
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
