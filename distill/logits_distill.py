"""DETRDistill's Hungarian-matching logits distillation of one decoder stage (METHODS.md, A).

Every teacher prediction is a pseudo target: its full sigmoid score vector is the class target and
its box, clamped to the image, the box target. Student queries are matched one-to-one to teacher
predictions by a Hungarian assignment, then trained on BCE + L1 + GIoU against their match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss

from detr_models.box_ops import cxcywh_to_xyxy
from detr_models.matcher import BAD_COST, Assignment, solve_assignments


def clamp_boxes_to_image(boxes: torch.Tensor) -> torch.Tensor:
    """Normalised cxcywh boxes `[..., 4]` with their corners clamped to [0, 1]."""
    xyxy = cxcywh_to_xyxy(boxes).clamp(min=0.0, max=1.0)  # [..., 4]
    return box_convert(xyxy, in_fmt="xyxy", out_fmt="cxcywh")


@torch.no_grad()
def match_to_teacher(
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
) -> list[Assignment]:
    """Hungarian assignment of student queries to teacher predictions, one pair per image.

    student_logits [B,Qs,C], student_boxes [B,Qs,4], teacher_logits [B,Qt,C], teacher_boxes
    [B,Qt,4] (normalised cxcywh). cost(i,j) = cost_class * sum_c BCE(z_s[i,c], p[j,c])
    + cost_bbox * L1(b_s[i], b_t[j]) - cost_giou * GIoU(b_s[i], b_t[j]), with p the teacher's
    sigmoid scores and b_t its boxes clamped to the image. Returns min(Qs, Qt) pairs per image as
    (student_idx, teacher_idx) int64 CPU tensors sorted by student index.
    """
    _check_inputs(student_logits, student_boxes, teacher_logits, teacher_boxes)
    cost = matching_cost(
        student_logits,
        student_boxes,
        teacher_logits,
        teacher_boxes,
        cost_class,
        cost_bbox,
        cost_giou,
    )  # [B, Qs, Qt]
    cost = cost.cpu()  # the only device-to-host transfer
    return solve_assignments(list(cost))


def logits_distillation_loss(
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    indices: Sequence[Assignment] | None = None,
    weight_class: float = 1.0,
    weight_bbox: float = 5.0,
    weight_giou: float = 2.0,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    clamp: bool = True,
) -> tuple[dict[str, torch.Tensor], list[Assignment]]:
    """Weighted distillation losses of one stage and the assignment they used.

    Matches with `match_to_teacher` unless `indices` (one (student_idx, teacher_idx) pair per
    image) is given. Then, each divided by B * Qt:
      cls  = weight_class * sum over all student queries and classes of BCE_with_logits(z_s, y),
             y = the matched teacher's sigmoid scores, all zeros (background) when unmatched;
      bbox = weight_bbox * sum of L1 over matched pairs;
      giou = weight_giou * sum of (1 - GIoU) over matched pairs.
    `clamp=False` keeps the teacher boxes as they are (OD-DETR's index-aligned distillation).
    Returns `({"cls", "bbox", "giou"}, indices)`. The teacher side never receives gradient.
    """
    _check_inputs(student_logits, student_boxes, teacher_logits, teacher_boxes)
    batch, num_student, _ = student_logits.shape
    num_teacher = teacher_logits.shape[1]
    if indices is None:
        indices = match_to_teacher(
            student_logits,
            student_boxes,
            teacher_logits,
            teacher_boxes,
            cost_class=cost_class,
            cost_bbox=cost_bbox,
            cost_giou=cost_giou,
        )
    else:
        indices = _checked_indices(indices, batch, num_student, num_teacher)

    # float32: BCE and GIoU areas lose too much in half precision.
    logits = student_logits.float()  # [B, Qs, C]
    boxes = student_boxes.float()  # [B, Qs, 4]
    teacher_prob = teacher_logits.detach().float().sigmoid()  # [B, Qt, C]
    teacher_box = teacher_boxes.detach().float()  # [B, Qt, 4]
    if clamp:
        teacher_box = clamp_boxes_to_image(teacher_box)
    norm = float(max(batch * num_teacher, 1))

    batch_idx = torch.cat(
        [torch.full((len(s),), b, dtype=torch.int64) for b, (s, _) in enumerate(indices)]
    ).to(logits.device)  # [N]
    student_idx = torch.cat([s for s, _ in indices]).to(logits.device)  # [N]
    teacher_idx = torch.cat([t for _, t in indices]).to(logits.device)  # [N]

    # Unmatched student queries keep the all-zero target: pure background.
    class_target = torch.zeros_like(logits)  # [B, Qs, C]
    class_target[batch_idx, student_idx] = teacher_prob[batch_idx, teacher_idx]
    # BCE minus the targets' own entropy (a constant for the student): same gradient as BCE,
    # and zero when the student reproduces the teacher, which makes the logged value readable
    # (written with xlogy: F.binary_cross_entropy is refused under CUDA autocast)
    entropy = -(
        torch.special.xlogy(class_target, class_target)
        + torch.special.xlogy(1 - class_target, 1 - class_target)
    ).sum()
    cls = (
        F.binary_cross_entropy_with_logits(logits, class_target, reduction="sum") - entropy
    ) / norm

    if batch_idx.numel() == 0:
        # Zero, but still a function of the boxes so DDP sees every parameter used; nan_to_num
        # keeps a diverged (NaN) prediction from turning this zero into NaN.
        l1 = boxes.nan_to_num().sum() * 0.0
        giou = l1.clone()
    else:
        src = boxes[batch_idx, student_idx]  # [N, 4]
        tgt = teacher_box[batch_idx, teacher_idx]  # [N, 4]
        l1 = F.l1_loss(src, tgt, reduction="sum") / norm
        giou = (
            generalized_box_iou_loss(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt), reduction="sum")
            / norm
        )
    losses = {"cls": cls * weight_class, "bbox": l1 * weight_bbox, "giou": giou * weight_giou}
    return losses, list(indices)


def matching_cost(
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    cost_class: float,
    cost_bbox: float,
    cost_giou: float,
) -> torch.Tensor:
    """The matching cost of every student query against every teacher prediction, `[B,Qs,Qt]`.

    On the input device and NaN-free; `match_to_teacher` solves it per image. Batched per image
    (bmm), not over the flattened batch as the GT matcher does: with Qt teacher predictions per
    image, the cross-image blocks would be B times larger than the useful ones.
    """
    # float32 at least: log-sigmoid products and box areas lose too much in half precision.
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    z = student_logits.to(dtype)  # [B, Qs, C]
    p = teacher_logits.to(dtype).sigmoid()  # [B, Qt, C]
    s_box = student_boxes.to(dtype)  # [B, Qs, 4]
    t_box = clamp_boxes_to_image(teacher_boxes.to(dtype))  # [B, Qt, 4]

    # sum_c BCE(z_ic, p_jc) = -sum_c [p_jc log s(z_ic) + (1 - p_jc) log s(-z_ic)]: two matmuls
    # instead of a [B, Qs, Qt, C] tensor.
    class_cost = -(
        F.logsigmoid(z) @ p.transpose(1, 2) + F.logsigmoid(-z) @ (1 - p).transpose(1, 2)
    )  # [B, Qs, Qt]
    l1_cost = torch.cdist(s_box, t_box, p=1)  # [B, Qs, Qt]
    giou_cost = -batched_pairwise_giou(cxcywh_to_xyxy(s_box), cxcywh_to_xyxy(t_box))

    cost = cost_class * class_cost + cost_bbox * l1_cost + cost_giou * giou_cost
    # scipy refuses NaN/inf; a diverging student must not stop a long run.
    return torch.nan_to_num(cost, nan=BAD_COST, posinf=BAD_COST, neginf=-BAD_COST)


def batched_pairwise_giou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Per-image pairwise GIoU `[B,N,M]` of xyxy boxes `[B,N,4]` and `[B,M,4]`, never NaN.

    torchvision's generalized_box_iou is 2-D only. Like `safe_pairwise_giou`, degenerate or NaN
    boxes give -1 (the worst GIoU) instead of NaN; meant for costs, not as a loss.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])  # [B, N]
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])  # [B, M]
    a = boxes1[:, :, None, :]  # [B, N, 1, 4]
    b = boxes2[:, None, :, :]  # [B, 1, M, 4]

    inter_wh = (
        torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])
    ).clamp(min=0)  # [B, N, M, 2]
    inter = inter_wh[..., 0] * inter_wh[..., 1]  # [B, N, M]
    union = area1[:, :, None] + area2[:, None, :] - inter  # [B, N, M]
    iou = inter / union

    hull_wh = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(
        min=0
    )  # [B, N, M, 2]
    hull = hull_wh[..., 0] * hull_wh[..., 1]  # [B, N, M]
    giou = iou - (hull - union) / hull
    return torch.nan_to_num(giou, nan=-1.0, posinf=1.0, neginf=-1.0).clamp(min=-1.0, max=1.0)


def _check_inputs(
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
) -> None:
    if student_logits.ndim != 3 or teacher_logits.ndim != 3:
        raise ValueError(
            f"logits must be [B, Q, C]; got student {list(student_logits.shape)}, "
            f"teacher {list(teacher_logits.shape)}"
        )
    if student_boxes.shape != (*student_logits.shape[:2], 4):
        raise ValueError(
            f"student boxes must be {[*student_logits.shape[:2], 4]}, "
            f"got {list(student_boxes.shape)}"
        )
    if teacher_boxes.shape != (*teacher_logits.shape[:2], 4):
        raise ValueError(
            f"teacher boxes must be {[*teacher_logits.shape[:2], 4]}, "
            f"got {list(teacher_boxes.shape)}"
        )
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"student batch {student_logits.shape[0]} != teacher batch {teacher_logits.shape[0]}"
        )
    if student_logits.shape[2] != teacher_logits.shape[2]:
        raise ValueError(
            f"student has {student_logits.shape[2]} classes but the teacher has "
            f"{teacher_logits.shape[2]}; distillation needs the same class list"
        )


def _checked_indices(
    indices: Sequence[Assignment], batch: int, num_student: int, num_teacher: int
) -> list[Assignment]:
    """A given assignment as int64 CPU pairs, one per image, with indices in range."""
    if len(indices) != batch:
        raise ValueError(f"indices has {len(indices)} entries for a batch of {batch} images")
    pairs: list[Assignment] = []
    for b, (s, t) in enumerate(indices):
        s = torch.as_tensor(s, dtype=torch.int64).cpu()
        t = torch.as_tensor(t, dtype=torch.int64).cpu()
        if s.shape != t.shape or s.ndim != 1:
            raise ValueError(f"indices of image {b}: student and teacher index lengths differ")
        if s.numel() and (int(s.min()) < 0 or int(s.max()) >= num_student):
            raise ValueError(f"indices of image {b}: student index outside [0, {num_student})")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_teacher):
            raise ValueError(f"indices of image {b}: teacher index outside [0, {num_teacher})")
        pairs.append((s, t))
    return pairs
