"""The exported student: the detector plus what inference needs (class names, ids, sizes).

Its forward returns one tensor so that MLflow's pyfunc serving can handle it:
`[B,Q,4+C]` = normalised cxcywh boxes followed by the class probabilities (sigmoid).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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
