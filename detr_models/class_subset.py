"""Restricting a trained detector to some of its classes, in place and exactly: a COCO-80
teacher distilling into a student whose dataset has a subset of those classes (reordered)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from detr_models.layers import PerStage, SoftmaxClassHead


def restrict_classes(model: nn.Module, index: Sequence[int]) -> nn.Module:
    """Keep classes `index` of `model` (its class k becomes `index[k]` of before). Sigmoid
    heads keep those rows of their classifier; a softmax head keeps normalising over all its
    classes and returns the chosen ones, so every kept probability is unchanged."""
    index = list(index)
    if not index or min(index) < 0 or max(index) >= model.num_classes:
        raise ValueError(f"class index {index} out of range for {model.num_classes} classes")
    # a two-stage model's proposal head stays whole: it picks proposals as it was trained to
    _restrict(model.class_head, index, "class_head")
    model.num_classes = len(index)
    return model


def _restrict(head: nn.Module, index: list[int], name: str) -> None:
    if isinstance(head, SoftmaxClassHead):
        head.keep = torch.tensor(index, dtype=torch.long, device=head.linear.weight.device)
    elif isinstance(head, PerStage):
        for stage in head:
            _restrict(stage, index, name)
    elif isinstance(head, nn.Linear):
        keep = torch.tensor(index, device=head.weight.device)
        head.weight = nn.Parameter(head.weight.detach()[keep].clone())
        head.bias = nn.Parameter(head.bias.detach()[keep].clone())
        head.out_features = len(index)
    else:
        raise ValueError(f"{name}: cannot restrict a {type(head).__name__} to some classes")
