"""Turns one stage's predictions into scored pixel boxes per image (top-k over query x class)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from detr_models.box_ops import cxcywh_to_xyxy


class PostProcess(nn.Module):
    """Keeps the `top_k` highest (query, class) sigmoid scores of each image.

    A query can appear under several classes, as in Deformable DETR's evaluation; boxes come back
    as pixel xyxy in the original image, clamped to it.
    """

    def __init__(self, top_k: int = 100) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = top_k

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}"

    @torch.no_grad()
    def forward(
        self, logits: torch.Tensor, boxes: torch.Tensor, orig_sizes: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """Per image `{"scores" [k], "labels" [k] int64, "boxes" [k,4] pixel xyxy}`, best first.

        logits [B,Q,C], boxes [B,Q,4] normalised cxcywh, orig_sizes [B,2] as (H, W);
        k = min(top_k, Q*C).
        """
        if logits.ndim != 3 or boxes.shape != (*logits.shape[:2], 4):
            raise ValueError(
                f"expected logits [B,Q,C] and boxes [B,Q,4], got {list(logits.shape)} and "
                f"{list(boxes.shape)}"
            )
        batch, _, num_classes = logits.shape
        sizes = torch.as_tensor(orig_sizes, device=logits.device).float()
        if sizes.shape != (batch, 2):
            raise ValueError(f"orig_sizes must be [B, 2] = [{batch}, 2], got {list(sizes.shape)}")

        # A diverged model must still give something the evaluator can score (NaN counts as 0).
        prob = torch.nan_to_num(logits.float().sigmoid(), nan=0.0).flatten(1)  # [B, Q*C]
        k = min(self.top_k, prob.shape[1])
        scores, flat = prob.topk(k, dim=1)  # [B, k], sorted descending
        query = torch.div(flat, num_classes, rounding_mode="floor")  # [B, k]
        labels = flat % num_classes  # [B, k]

        xyxy = cxcywh_to_xyxy(torch.nan_to_num(boxes.float(), nan=0.0))  # [B, Q, 4]
        xyxy = torch.gather(xyxy, 1, query.unsqueeze(-1).expand(-1, -1, 4))  # [B, k, 4]
        height, width = sizes.unbind(1)  # [B] each
        scale = torch.stack([width, height, width, height], dim=1)  # [B, 4]
        xyxy = xyxy * scale[:, None, :]
        upper = scale[:, None, :]  # x clamps to W, y to H
        xyxy = torch.minimum(xyxy.clamp(min=0.0), upper)

        return [
            {"scores": s, "labels": lab, "boxes": b}
            for s, lab, b in zip(scores, labels, xyxy, strict=True)
        ]

    @torch.no_grad()
    def predictions_for_evaluator(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict]
    ) -> list[dict]:
        """`forward` on the last stage's `[B,Q,C]`/`[B,Q,4]`, sized and labelled by the targets.

        Uses each target's `orig_size` (H, W) and `image_id`; the dicts carry `image_id`,
        `boxes`, `scores`, `labels`, as CocoEvaluator.update expects.
        """
        if len(targets) != logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {logits.shape[0]} images")
        orig_sizes = torch.stack(
            [torch.as_tensor(t["orig_size"], device=logits.device).reshape(2) for t in targets]
        )  # [B, 2]
        results = self(logits, boxes, orig_sizes)
        for result, target in zip(results, targets, strict=True):
            result["image_id"] = int(torch.as_tensor(target["image_id"]).reshape(()))
        return results
