"""The exported student: the detector plus what inference needs (class names, ids, sizes),
returning the last decoder stage as plain tensors."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ExportedDetector(nn.Module):
    """`forward(images [B,3,H,W] normalised) -> {"logits": [B,Q,C], "boxes": [B,Q,4] cxcywh}`."""

    def __init__(self, model: nn.Module, extra: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(extra.get("class_names", []))
        self.label_to_category = list(extra.get("label_to_category", []))
        self.eval_size = int(extra.get("eval_size", 800))
        self.max_size = int(extra.get("max_size", 1333))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(images)
        return {"logits": out.logits[-1], "boxes": out.boxes[-1]}
