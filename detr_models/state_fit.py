"""What stops a state dict from loading into a model strictly, as readable lines."""

from __future__ import annotations

import torch
from torch import nn


def fit_problems(model: nn.Module, state: dict[str, torch.Tensor], limit: int = 6) -> list[str]:
    """One line per kind of problem (missing, unexpected, mis-shaped keys: file vs model);
    empty when the state dict loads strictly."""
    own = model.state_dict()
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    problems = []
    for label, keys in (
        ("missing", sorted(set(own) - set(state))),
        ("unexpected", sorted(set(state) - set(own))),
        ("shape mismatch", shapes),
    ):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            problems.append(f"{label}: {', '.join(keys[:limit])}{more}")
    return problems
