"""Reading a Hugging Face model folder (`config.json` + safetensors) into this product's model,
without running any code from it: safetensors (or a `.bin` read with weights_only=True)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detr_models.build import build_model
from detr_models.config import ModelConfig
from detr_models.pretrained.hf_config import UnsupportedCheckpoint, config_from_hf
from detr_models.pretrained.hf_keys import convert_hf_state
from detr_models.state_fit import fit_problems


class ImportError_(ValueError):
    """A checkpoint that cannot be imported; the message names the file and the problem."""


@dataclass
class Imported:
    """An imported model: config, weights loaded, class names, and what the import mapped."""

    config: ModelConfig
    model: nn.Module
    class_names: list[str]
    mapped: int
    notes: list[str] = field(default_factory=list)


def read_hf_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json as a dict, the state dict) of a local HF model folder."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ImportError_(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        hf = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise ImportError_(f"{config_file}: not readable JSON ({err})") from None
    if not isinstance(hf, dict):
        raise ImportError_(f"{config_file}: expected a JSON object")
    return hf, _read_weights(folder)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                state.update(load_file(str(file)))
            except (SafetensorError, OSError, ValueError) as err:
                raise ImportError_(
                    f"{file}: not a readable safetensors file (truncated or corrupt: {err})"
                ) from None
        return state
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise ImportError_(f"{folder}: no *.safetensors or pytorch_model.bin weights")
    state = {}
    for file in bins:
        try:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as err:  # a pickle with code is refused by weights_only
            raise ImportError_(
                f"{file}: refused or unreadable ({type(err).__name__}); only tensors are read"
            ) from None
    return state


def import_hf(folder: str | Path) -> Imported:
    """Build our reference-exact model from an HF folder and load its weights strictly."""
    hf, state = read_hf_folder(folder)
    try:
        config, names = config_from_hf(hf)
    except UnsupportedCheckpoint as err:
        raise ImportError_(f"{Path(folder) / 'config.json'}: {err}") from None
    converted, unmapped = convert_hf_state(state, config)
    return loaded(config, names, converted, unmapped, f"{folder} (as its config.json describes it)")


def loaded(
    config: ModelConfig,
    names: list[str],
    state: dict[str, torch.Tensor],
    unmapped: list[str],
    where: str,
) -> Imported:
    """Our model of `config` with `state` loaded strictly; otherwise an error listing the
    unmapped, missing, unexpected and mis-shaped names."""
    model = build_model(config)
    counters = {  # BatchNorm's step counters are not weights; files often leave them out
        k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")
    }
    state = {**counters, **state}
    problems = fit_problems(model, state, limit=8)
    if unmapped:
        more = f" (+{len(unmapped) - 8} more)" if len(unmapped) > 8 else ""
        problems.insert(0, f"unmapped (no rule for these names): {', '.join(unmapped[:8])}{more}")
    if problems:
        raise ImportError_(
            f"the weights do not fit the {config.architecture} of {where}:\n  "
            + "\n  ".join(problems)
        )
    model.load_state_dict(state)
    return Imported(config, model.eval(), names, len(state))
