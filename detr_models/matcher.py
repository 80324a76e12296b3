"""Hungarian matching of predicted queries to ground-truth boxes (one-to-one, per image)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from detr_models.box_ops import cxcywh_to_xyxy, safe_pairwise_giou

# One image's assignment: (query indices, target indices), both int64 on the CPU.
Assignment = tuple[torch.Tensor, torch.Tensor]

# Stands in for NaN/inf costs: large enough that the solver avoids such pairs whenever it can,
# small enough that sums over a whole assignment stay exact in float64.
BAD_COST = 1e8

# Problems at least this large (Q x M) are solved on threads: scipy releases the GIL, and a
# dense 300 x 300 student-to-teacher matching takes ~25 ms per image and stage.
PARALLEL_MIN_SIZE = 10_000
_POOL: ThreadPoolExecutor | None = None


class HungarianMatcher(nn.Module):
    """Matches each ground-truth box to one query by minimising a weighted cost.

    cost = cost_class * focal class cost + cost_bbox * L1(cxcywh) - cost_giou * GIoU(xyxy),
    with the focal class cost of Deformable DETR (sigmoid scores, no "no-object" class). The
    module has no parameters; matching never builds a graph.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma}"
        )

    @torch.no_grad()
    def forward(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict]
    ) -> list[Assignment]:
        """One (query_idx, target_idx) pair of int64 CPU tensors per image, sorted by query.

        logits [B,Q,C], boxes [B,Q,4] normalised cxcywh; targets[b] has `labels` [M_b] and
        `boxes` [M_b,4]. An image with no targets gets two empty tensors.
        """
        cost, sizes = self._batch_cost(logits, boxes, targets)  # [B, Q, sum M]
        cost = cost.cpu()  # the only device-to-host transfer
        return solve_assignments([block[b] for b, block in enumerate(cost.split(sizes, dim=-1))])

    @torch.no_grad()
    def cost_matrices(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict]
    ) -> list[torch.Tensor]:
        """The matching cost of every image, `[Q, M_b]`, on the input device (NaN-free).

        For selections other than the optimal assignment, e.g. the k cheapest queries per GT.
        """
        cost, sizes = self._batch_cost(logits, boxes, targets)  # [B, Q, sum M]
        return [block[b] for b, block in enumerate(cost.split(sizes, dim=-1))]

    def _batch_cost(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict]
    ) -> tuple[torch.Tensor, list[int]]:
        """The cost of every query against every target of the batch, `[B, Q, sum M]`.

        Building it for the whole batch at once keeps the GPU busy with a few large kernels;
        the off-diagonal (image b query, image b' target) blocks are simply ignored.
        """
        _check_inputs(logits, boxes, targets)
        batch, num_queries, num_classes = logits.shape
        sizes = [len(t["boxes"]) for t in targets]
        total = sum(sizes)
        # float32 at least: the focal terms underflow in half precision.
        dtype = torch.promote_types(logits.dtype, torch.float32)
        if total == 0:
            return logits.new_zeros((batch, num_queries, 0), dtype=dtype), sizes

        prob = logits.flatten(0, 1).to(dtype).sigmoid()  # [B*Q, C]
        out_boxes = boxes.flatten(0, 1).to(dtype)  # [B*Q, 4]
        tgt_labels = torch.cat([t["labels"] for t in targets]).to(logits.device).long()  # [T]
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(out_boxes)  # [T, 4]
        # One sync here; an out-of-range label would otherwise be a device-side assert on GPU.
        if bool(((tgt_labels < 0) | (tgt_labels >= num_classes)).any()):
            raise ValueError(f"target labels must lie in [0, {num_classes}), the logit width")

        eps = 1e-8
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + eps).log()  # [B*Q, C]
        pos = alpha * (1 - prob).pow(gamma) * -(prob + eps).log()  # [B*Q, C]
        class_cost = pos[:, tgt_labels] - neg[:, tgt_labels]  # [B*Q, T]
        l1_cost = torch.cdist(out_boxes, tgt_boxes, p=1)  # [B*Q, T]
        giou_cost = -safe_pairwise_giou(cxcywh_to_xyxy(out_boxes), cxcywh_to_xyxy(tgt_boxes))

        cost = self.cost_bbox * l1_cost + self.cost_class * class_cost + self.cost_giou * giou_cost
        # scipy refuses NaN/inf; a diverging model must not stop a long run.
        cost = torch.nan_to_num(cost, nan=BAD_COST, posinf=BAD_COST, neginf=-BAD_COST)
        return cost.view(batch, num_queries, total), sizes


def solve_assignment(cost: torch.Tensor) -> Assignment:
    """Optimal assignment of one image's `[Q, M]` CPU cost, sorted by query index."""
    if cost.shape[1] == 0 or cost.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    rows, cols = linear_sum_assignment(cost.numpy())
    query_idx = torch.as_tensor(rows, dtype=torch.int64)
    target_idx = torch.as_tensor(cols, dtype=torch.int64)
    order = torch.argsort(query_idx)
    return query_idx[order], target_idx[order]


def solve_assignments(costs: Sequence[torch.Tensor]) -> list[Assignment]:
    """`solve_assignment` of every CPU cost; large problems run on a small thread pool."""
    global _POOL
    if len(costs) < 2 or max(c.numel() for c in costs) < PARALLEL_MIN_SIZE:
        return [solve_assignment(c) for c in costs]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="hungarian")
    return list(_POOL.map(solve_assignment, costs))


def _check_inputs(logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict]) -> None:
    if logits.ndim != 3:
        raise ValueError(f"logits must be [B, Q, C], got shape {list(logits.shape)}")
    if boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"boxes must be [B, Q, 4] = {[*logits.shape[:2], 4]}, got {list(boxes.shape)}"
        )
    if len(targets) != logits.shape[0]:
        raise ValueError(f"got {len(targets)} targets for a batch of {logits.shape[0]} images")
