"""OD-DETR's matching distillation of the main queries (METHODS.md, OD-DETR 1).

Each student query i has the student's own Hungarian match and the EMA teacher's match of the
same query (by index; for two-stage models, of the query from the same encoder token). A query
is positive if either match is set, so a GT can have two positive queries.

- Classification, multi-target quality focal loss (default): target y_ic = IoU(b_i, g) for the
  class of each GT matched to i (the larger of the two when both set the same class), loss
  sum |y - s|^2 * BCE(s, y) / num_gt. Ablation: plain sigmoid focal loss on one-hot targets of
  the union of positives.
- Boxes: L1 + GIoU to the student's GT, plus (weight w_t) to the teacher's GT where it differs.
The teacher's share (its class targets and box terms) is multiplied by `teacher_scale`, so a
schedule can phase the distillation in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detr_models.box_ops import cxcywh_to_xyxy
from detr_models.matcher import Assignment


def paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of corresponding cxcywh boxes `[N,4]` and `[N,4]` -> `[N]` (0 where degenerate)."""
    a, b = cxcywh_to_xyxy(boxes1), cxcywh_to_xyxy(boxes2)
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return torch.nan_to_num(inter / (area_a + area_b - inter), nan=0.0).clamp(0.0, 1.0)


def map_by_token(
    teacher_idx: Sequence[Assignment], teacher_tokens: torch.Tensor, student_tokens: torch.Tensor
) -> list[Assignment]:
    """Re-express a teacher assignment in student query indices through the encoder tokens
    both two-stage models selected (`[B,Q]` each); teacher queries whose token the student did
    not select are dropped."""
    mapped = []
    for b, (queries, gts) in enumerate(teacher_idx):
        where = {int(t): i for i, t in enumerate(student_tokens[b].tolist())}
        tokens = teacher_tokens[b].cpu()[queries].tolist()
        keep = [(where[t], int(g)) for t, g in zip(tokens, gts.tolist(), strict=True) if t in where]
        q = torch.tensor([s for s, _ in keep], dtype=torch.int64)
        g = torch.tensor([g for _, g in keep], dtype=torch.int64)
        mapped.append((q, g))
    return mapped


def _pairs(indices: Sequence[Assignment], targets: Sequence[dict], device: torch.device):
    """(image, query, GT label, GT box) of every pair, flattened over the batch."""
    batch = torch.cat(
        [torch.full((len(q),), b, dtype=torch.int64) for b, (q, _) in enumerate(indices)]
    )
    query = torch.cat([q.long().cpu() for q, _ in indices])
    labels = torch.cat(
        [t["labels"].cpu()[g.cpu()] for t, (_, g) in zip(targets, indices, strict=True)]
    )
    boxes = torch.cat(
        [t["boxes"].cpu()[g.cpu()] for t, (_, g) in zip(targets, indices, strict=True)]
    )
    return batch.to(device), query.to(device), labels.long().to(device), boxes.to(device)


def extra_teacher_pairs(
    student_idx: Sequence[Assignment], teacher_idx: Sequence[Assignment]
) -> list[Assignment]:
    """The teacher's pairs whose query the student matched to another GT, or to none."""
    extra = []
    for (sq, sg), (tq, tg) in zip(student_idx, teacher_idx, strict=True):
        own = dict(zip(sq.tolist(), sg.tolist(), strict=True))
        keep = [(q, g) for q, g in zip(tq.tolist(), tg.tolist(), strict=True) if own.get(q) != g]
        extra.append(
            (
                torch.tensor([q for q, _ in keep], dtype=torch.int64),
                torch.tensor([g for _, g in keep], dtype=torch.int64),
            )
        )
    return extra


def agreement(
    student_idx: Sequence[Assignment], teacher_idx: Sequence[Assignment]
) -> tuple[int, int]:
    """(GTs matched to the same query by student and teacher, GTs) over the batch."""
    same, total = 0, 0
    for (sq, sg), (tq, tg) in zip(student_idx, teacher_idx, strict=True):
        teacher_query = dict(zip(tg.tolist(), tq.tolist(), strict=True))
        same += sum(
            teacher_query.get(g) == q for q, g in zip(sq.tolist(), sg.tolist(), strict=True)
        )
        total += len(sg)
    return same, total


def matching_distillation_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: Sequence[dict],
    student_idx: Sequence[Assignment],
    teacher_idx: Sequence[Assignment],
    norm: float,
    quality_focal: bool = True,
    teacher_scale: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Unweighted losses of one stage: `cls`, `bbox`, `giou` (student's GT) and `teacher_bbox`,
    `teacher_giou` (teacher's GT where it differs), each divided by `norm` (the GT count).

    logits [B,Q,C], boxes [B,Q,4]; both assignments are (query_idx, gt_idx) per image."""
    logits, boxes = logits.float(), boxes.float()
    device = logits.device
    sb, sq, sl, sbox = _pairs(student_idx, targets, device)
    extra = extra_teacher_pairs(student_idx, teacher_idx)
    tb, tq, tl, tbox = _pairs(teacher_idx, targets, device)
    class_target = torch.zeros_like(logits)  # [B, Q, C]
    with torch.no_grad():
        if quality_focal:
            student_value = paired_iou(boxes[sb, sq], sbox.float())
            teacher_value = paired_iou(boxes[tb, tq], tbox.float()) * teacher_scale
        else:
            student_value = torch.ones(len(sb), device=device)
            teacher_value = torch.full((len(tb),), float(teacher_scale), device=device)
        # the larger target wins where both matches set the same (query, class)
        flat = class_target.view(-1)
        num_classes, num_queries = logits.shape[2], logits.shape[1]
        for b, q, lab, value in ((sb, sq, sl, student_value), (tb, tq, tl, teacher_value)):
            index = (b * num_queries + q) * num_classes + lab
            flat.scatter_reduce_(0, index, value.to(flat), reduce="amax")
    if quality_focal:
        prob = logits.sigmoid()
        bce = F.binary_cross_entropy_with_logits(logits, class_target, reduction="none")
        cls = ((class_target - prob).abs().pow(2) * bce).sum() / norm
    else:
        cls = (
            sigmoid_focal_loss(
                logits, class_target, alpha=focal_alpha, gamma=focal_gamma, reduction="sum"
            )
            / norm
        )
    losses = {"cls": cls}
    losses["bbox"], losses["giou"] = _box_losses(boxes, sb, sq, sbox, norm)
    eb, eq, _, ebox = _pairs(extra, targets, device)
    l1, giou = _box_losses(boxes, eb, eq, ebox, norm)
    losses["teacher_bbox"], losses["teacher_giou"] = l1 * teacher_scale, giou * teacher_scale
    return losses


def _box_losses(boxes, batch_idx, query_idx, gt_boxes, norm: float):
    if batch_idx.numel() == 0:
        zero = boxes.nan_to_num().sum() * 0.0  # still a function of the boxes (DDP)
        return zero, zero.clone()
    src = boxes[batch_idx, query_idx]
    tgt = gt_boxes.to(src)
    l1 = F.l1_loss(src, tgt, reduction="sum") / norm
    giou = generalized_box_iou_loss(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt), reduction="sum")
    return l1, giou / norm
