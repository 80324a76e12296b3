"""The deployable graph of a detector: [0, 1] RGB pixels in, either the last stage's raw
predictions (`logits` [B,Q,C] sigmoid logits, `boxes` [B,Q,4] normalised cxcywh) or, with
post-processing, the top-k detections (`scores` [B,K], `labels` [B,K] int64, `boxes` [B,K,4]
xyxy in pixels of the input), so that a deployment needs nothing else."""

from __future__ import annotations

import torch
from torch import nn

from detr_models.backbone import IMAGENET_MEAN, IMAGENET_STD
from detr_models.box_ops import cxcywh_to_xyxy

RAW_OUTPUTS = ("logits", "boxes")
POSTPROCESSED_OUTPUTS = ("scores", "labels", "boxes")


class DeployGraph(nn.Module):
    """`forward(images [B,3,H,W] float RGB in [0, 1])`: the ImageNet normalisation the models
    were trained with happens inside, then the model, then (optionally) top-k decoding."""

    def __init__(self, model: nn.Module, postprocess: bool = False, top_k: int = 100) -> None:
        super().__init__()
        self.model = model.eval()
        self.postprocess = postprocess
        self.top_k = top_k
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    @property
    def output_names(self) -> tuple[str, ...]:
        return POSTPROCESSED_OUTPUTS if self.postprocess else RAW_OUTPUTS

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model((images - self.mean) / self.std)
        logits, boxes = out.logits[-1], out.boxes[-1]
        if not self.postprocess:
            return logits, boxes
        return top_detections(logits, boxes, images.shape[-2], images.shape[-1], self.top_k)


def top_detections(
    logits: torch.Tensor, boxes: torch.Tensor, height: int, width: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k (query, class) scores of each image with their labels and pixel xyxy boxes
    clamped to the input, best first (as detr_models.postprocess.PostProcess)."""
    num_classes = logits.shape[-1]
    prob = logits.sigmoid().flatten(1)  # [B, Q*C]
    k = min(top_k, prob.shape[1])
    scores, flat = prob.topk(k, dim=1)
    query = torch.div(flat, num_classes, rounding_mode="floor")
    labels = flat % num_classes
    xyxy = cxcywh_to_xyxy(boxes)
    xyxy = torch.gather(xyxy, 1, query.unsqueeze(-1).expand(-1, -1, 4))
    scale = torch.stack(
        [
            torch.full((), width, dtype=xyxy.dtype, device=xyxy.device),
            torch.full((), height, dtype=xyxy.dtype, device=xyxy.device),
        ]
    ).repeat(2)  # (W, H, W, H)
    xyxy = torch.minimum((xyxy * scale).clamp(min=0.0), scale)
    return scores, labels, xyxy
