"""The optimiser and learning-rate schedule of a run: AdamW with per-group rates (backbone,
deformable sampling offsets, distillation adapters) and a per-iteration warm-up + step or
cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from detr_models.build import unwrap


def backbone_parameter(name: str) -> bool:
    return name.startswith("backbone.")


def offset_parameter(name: str) -> bool:
    """Deformable DETR trains sampling offsets and reference heads at a reduced rate."""
    # the plain Deformable decoder's linear reference head, not the MLPs of anchor decoders
    return "sampling_offsets" in name or name in (
        "decoder.reference_head.weight",
        "decoder.reference_head.bias",
    )


def build_optimizer(
    model: nn.Module,
    lr: float,
    backbone_lr_mult: float,
    weight_decay: float,
    offset_lr_mult: float = 1.0,
    extra_modules: list[nn.Module] | None = None,
) -> torch.optim.AdamW:
    """AdamW with the backbone at `lr * backbone_lr_mult` and deformable sampling offsets at
    `lr * offset_lr_mult` (frozen parameters left out; a multiplier of 0 freezes the group).
    `extra_modules` (e.g. distillation adapters) train at the base rate."""
    groups: dict[str, list[nn.Parameter]] = {"base": [], "backbone": [], "offsets": []}
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        key = (
            "backbone"
            if backbone_parameter(name)
            else "offsets"
            if offset_parameter(name)
            else "base"
        )
        groups[key].append(param)
    for module in extra_modules or []:
        groups["base"] += [p for p in module.parameters() if p.requires_grad]
    param_groups = [{"params": groups["base"], "lr": lr, "name": "base"}]
    for key, mult in (("backbone", backbone_lr_mult), ("offsets", offset_lr_mult)):
        if groups[key] and mult > 0:
            param_groups.append({"params": groups[key], "lr": lr * mult, "name": key})
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    iters_per_epoch: int,
    epochs: int,
    warmup_iters: int = 0,
    step_epochs: list[int] | None = None,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration multiplier: linear warm-up, then constant, step (at epochs) or cosine."""
    total = max(1, iters_per_epoch * epochs)
    steps = [e * iters_per_epoch for e in step_epochs or []]

    def factor(it: int) -> float:
        warm = min(1.0, (it + 1) / warmup_iters) if warmup_iters else 1.0
        if schedule == "step":
            return warm * gamma ** sum(it >= s for s in steps)
        if schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        return warm

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
