"""Checkpoint files: the plain model file (config + state dict) and the training state used to
resume. Both hold only tensors and plain data (numbers, strings, lists, dicts), are read with
`torch.load(weights_only=True)`, so no pickled code is ever run, and are written atomically
(a temporary name, then a rename), so a crash never leaves a truncated file behind."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detr_models.config import ModelConfig
from detr_models.state_fit import fit_problems
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
    _save_atomically(payload, path)
    return path


def _save_atomically(payload: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_plain(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)` with our own messages: a file holding anything but
    tensors and plain data is refused (it could run code when unpickled), never loaded."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserInputError(
            f"{path}: refused to load this {what}: it holds Python objects other than tensors "
            "and plain data, which could run code when read. Only files written by detrdistill "
            "(or plain state dicts of tensors) are read; if you did not write it, delete it."
        ) from None
    except Exception as err:
        raise UserInputError(
            f"{path}: not a readable {what} (truncated, or not a torch file: {type(err).__name__})"
        ) from None


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Load a plain model file safely; a foreign or broken file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: model file not found")
    payload = load_plain(path, "weights file")
    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        return payload
    if isinstance(payload, dict) and all(torch.is_tensor(v) for v in payload.values()):
        return {"format": None, "config": None, "state_dict": payload, "extra": {}}
    raise UserInputError(
        f"{path}: not a detrdistill model file (expected format {MODEL_FORMAT!r} or a bare state dict)"
    )


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; a mismatch lists the missing, unexpected and wrongly shaped keys."""
    problems = fit_problems(model, state_dict)
    if problems:
        raise UserInputError(
            f"weights from {source} do not fit the configured model; "
            + "; ".join(problems)
            + ". Make the model config match the one the weights were trained with."
        )
    model.load_state_dict(state_dict)


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from, as tensors and plain data."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": python_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["position"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write the resume state (model, optimizer, scheduler, epoch, RNG, history): tensors and
    plain data only, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _save_atomically(state, directory / STATE_FILE)
    return directory


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """The resume state of a checkpoint folder, read without unpickling code."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise UserInputError(f"{path}: training state not found (an incomplete checkpoint)")
    state = load_plain(path, "training state")
    if not isinstance(state, dict) or "model" not in state:
        raise UserInputError(f"{path}: not a detrdistill training state")
    return state
