"""DETRDistill's target-aware feature distillation of one feature level (METHODS.md, B).

The teacher's confident queries say where the objects are: a pixel whose feature points the same
way as the hidden state of a good query (high score, box on a GT) gets a high weight psi. The
student's feature map, adapted to the teacher's width, imitates the teacher's under that weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from detr_models.box_ops import cxcywh_to_xyxy


@torch.no_grad()
def target_aware_mask(
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_feature: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    top_k: int = 100,
    floor: float = 0.01,
    feature_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The selection mask psi `[B,H,W]` (float32) of one teacher stage on one feature level.

    teacher_logits [B,Q,C], teacher_boxes [B,Q,4] (normalised cxcywh), teacher_hidden [B,Q,D],
    teacher_feature [B,D,H,W]; gt_boxes[b] is `[M_b,4]` normalised cxcywh; feature_mask
    `[B,H,W]` is True on padding. The top-k (query, class) pairs j of sigmoid(teacher_logits)
    give m(x,y) = sum_j t_j * cos(h[query_j], F(x,y)) with quality t_j = score_j * (max IoU of the
    query's box with the image's GT boxes, 1 without GT); psi = clamp(m, floor) / max over valid
    pixels, so psi lies in (0,1] on valid pixels (max exactly 1) and is 0 on padding.
    """
    _check_mask_inputs(
        teacher_logits, teacher_boxes, teacher_hidden, teacher_feature, gt_boxes, feature_mask
    )
    if floor <= 0:
        raise ValueError(f"floor must be positive (it keeps psi above 0), got {floor}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    batch, num_queries, num_classes = teacher_logits.shape
    dim, height, width = teacher_feature.shape[1:]

    scores = teacher_logits.float().sigmoid().flatten(1)  # [B, Q*C]
    k = min(top_k, num_queries * num_classes)
    top_scores, top_pairs = scores.topk(k, dim=1)  # [B, k], [B, k]
    query = torch.div(top_pairs, num_classes, rounding_mode="floor")  # [B, k]

    best_iou = _best_gt_iou(teacher_boxes.float(), gt_boxes)  # [B, Q]
    quality = top_scores * best_iou.gather(1, query)  # [B, k]

    hidden = teacher_hidden.float().gather(1, query[..., None].expand(-1, -1, dim))  # [B, k, D]
    # sum_j t_j cos(q_j, f) = <sum_j t_j q_j/|q_j|, f/|f|>: one weighted direction per image,
    # so the cost is O(D*H*W) rather than O(k*D*H*W).
    direction = (quality[..., None] * F.normalize(hidden, dim=-1)).sum(1)  # [B, D]
    pixels = F.normalize(teacher_feature.float().flatten(2), dim=1)  # [B, D, H*W]
    m = torch.einsum("bd,bdn->bn", direction, pixels).view(batch, height, width)  # [B, H, W]
    # A NaN from a diverged teacher becomes the floor rather than poisoning the loss.
    m = torch.nan_to_num(m, nan=0.0).clamp(min=floor)

    if feature_mask is not None:
        m = m.masked_fill(feature_mask.to(m.device, torch.bool), 0.0)
    # Valid pixels are >= floor > 0, so the max over the masked map is the max over valid pixels;
    # the clamp only matters for an image that is all padding (psi 0 there).
    peak = m.flatten(1).amax(dim=1).clamp(min=floor)  # [B]
    return m / peak[:, None, None]


def feature_distillation_loss(
    student_feature: torch.Tensor,
    teacher_feature: torch.Tensor,
    psi: torch.Tensor,
    feature_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over (b, c, x, y) of (psi * F_t - psi * F_s)^2; gradient reaches the student only.

    student_feature [B,D,H,W] (already adapted to the teacher width), teacher_feature [B,D,H,W],
    psi [B,H,W]; feature_mask [B,H,W] is True on padding, which is then left out of the mean
    (divided by valid pixels * D). Computed in float32.
    """
    if student_feature.shape != teacher_feature.shape or student_feature.ndim != 4:
        raise ValueError(
            f"student and teacher features must both be [B, D, H, W]; got student "
            f"{list(student_feature.shape)}, teacher {list(teacher_feature.shape)} "
            "(adapt the student width with FeatureAdapter first)"
        )
    batch, dim, height, width = teacher_feature.shape
    if psi.shape != (batch, height, width):
        raise ValueError(f"psi must be {[batch, height, width]}, got {list(psi.shape)}")

    weight = psi.detach().float()  # [B, H, W]
    if feature_mask is None:
        count = batch * height * width
    else:
        if feature_mask.shape != psi.shape:
            raise ValueError(
                f"feature_mask must be {[batch, height, width]}, got {list(feature_mask.shape)}"
            )
        valid = ~feature_mask.to(weight.device, torch.bool)  # [B, H, W]
        weight = weight * valid
        count = int(valid.sum())
    diff = weight[:, None] * (teacher_feature.detach().float() - student_feature.float())
    return diff.pow(2).sum() / float(max(count, 1) * dim)


class FeatureAdapter(nn.Module):
    """Maps a student feature map `[B,Ds,H,W]` to the teacher width `[B,Dt,H,W]`.

    A 1x1 convolution when the widths differ; identity (no parameters) when they are equal.
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        if student_dim < 1 or teacher_dim < 1:
            raise ValueError(
                f"feature widths must be positive, got student {student_dim}, teacher {teacher_dim}"
            )
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.proj: nn.Module = (
            nn.Identity()
            if student_dim == teacher_dim
            else nn.Conv2d(student_dim, teacher_dim, kernel_size=1)
        )

    def extra_repr(self) -> str:
        return f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}"

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """`[B,Ds,H,W]` -> `[B,Dt,H,W]`."""
        return self.proj(feature)


def _best_gt_iou(boxes: torch.Tensor, gt_boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The best IoU of every query box with its image's GT boxes, `[B,Q]`; 1 without GT."""
    best = boxes.new_ones(boxes.shape[:2])  # [B, Q]
    for b, gt in enumerate(gt_boxes):
        if len(gt) == 0:
            continue
        gt = gt.to(boxes)
        iou = box_iou(cxcywh_to_xyxy(boxes[b]), cxcywh_to_xyxy(gt))  # [Q, M_b]
        # Zero-area boxes divide 0 by 0; such a pair simply does not overlap.
        best[b] = torch.nan_to_num(iou, nan=0.0).amax(dim=1)
    return best


def _check_mask_inputs(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    hidden: torch.Tensor,
    feature: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    feature_mask: torch.Tensor | None,
) -> None:
    if logits.ndim != 3:
        raise ValueError(f"teacher logits must be [B, Q, C], got {list(logits.shape)}")
    batch, num_queries = logits.shape[:2]
    if boxes.shape != (batch, num_queries, 4):
        raise ValueError(
            f"teacher boxes must be {[batch, num_queries, 4]}, got {list(boxes.shape)}"
        )
    if hidden.ndim != 3 or hidden.shape[:2] != (batch, num_queries):
        raise ValueError(
            f"teacher hidden must be [{batch}, {num_queries}, D], got {list(hidden.shape)}"
        )
    if feature.ndim != 4 or feature.shape[0] != batch or feature.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"teacher feature must be [{batch}, {hidden.shape[2]}, H, W] (the hidden width), "
            f"got {list(feature.shape)}"
        )
    if len(gt_boxes) != batch:
        raise ValueError(f"got {len(gt_boxes)} GT box sets for a batch of {batch} images")
    if feature_mask is not None and feature_mask.shape != (batch, *feature.shape[2:]):
        raise ValueError(
            f"feature_mask must be {[batch, *feature.shape[2:]]}, got {list(feature_mask.shape)}"
        )
