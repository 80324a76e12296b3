"""Box helpers that torchvision.ops lacks; everything else comes from torchvision.ops directly."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, generalized_box_iou


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The logit of `x`, with `x` clamped to [0, 1] and both log terms kept at least `eps`.

    Used to refine boxes in logit space (reference + delta, then sigmoid).
    """
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """`[..., 4]` cxcywh to `[..., 4]` xyxy (any leading dimensions)."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def safe_pairwise_giou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU `[N, M]` of xyxy boxes `[N, 4]` and `[M, 4]` that never returns NaN.

    torchvision's generalized_box_iou divides by the union and by the enclosing area without an
    epsilon, so two zero-area boxes (or NaN coordinates from a diverging model) give NaN. Those
    entries become -1, the worst GIoU, so a matcher treats such pairs as bad rather than failing.
    Meant for costs and targets, not as a loss.
    """
    # Half precision loses too much in the area products.
    dtype = torch.promote_types(torch.promote_types(boxes1.dtype, boxes2.dtype), torch.float32)
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]), dtype=dtype)
    giou = generalized_box_iou(boxes1.to(dtype), boxes2.to(dtype))  # [N, M]
    return torch.nan_to_num(giou, nan=-1.0, posinf=1.0, neginf=-1.0).clamp(min=-1.0, max=1.0)
