"""OD-DETR's auxiliary query groups from the teacher's decoder stages (METHODS.md, OD-DETR 3).

For each ground-truth box and each teacher stage, the teacher queries with the lowest matching
cost are selected; their stage output (hidden state as content, box as anchor) enters the
student's decoder as an extra query group, each query positive for its own GT under a fixed
assignment. A query that is among the cheapest for several GTs goes to the GT it costs least
for, and that GT's next cheapest free query takes its place.
"""

from __future__ import annotations

import torch

from detr_models.matcher import Assignment
from detr_models.output import DetrOutput, QueryGroup


@torch.no_grad()
def select_queries(cost: torch.Tensor, per_gt: int = 2) -> Assignment:
    """The `per_gt` cheapest queries of every GT in one image's `[Q, M]` cost.

    Greedy over (query, GT) pairs in increasing cost: a pair is taken when its query is still
    free and its GT still has room. Candidates are each GT's `3 * per_gt` cheapest queries, so a
    GT whose candidates all went to others gets fewer. Returns (query_idx, gt_idx) int64 CPU
    tensors ordered by GT, then cost; empty when the image has no GT.
    """
    num_queries, num_gt = cost.shape
    empty = torch.zeros(0, dtype=torch.int64)
    if num_gt == 0 or num_queries == 0 or per_gt == 0:
        return empty, empty.clone()
    cost = cost.detach().float().cpu()
    candidates = min(num_queries, 3 * per_gt)
    values, queries = cost.topk(candidates, dim=0, largest=False)  # [K, M]
    order = values.flatten().argsort(stable=True).tolist()
    flat_values, flat_queries = values.flatten().tolist(), queries.flatten().tolist()
    taken: set[int] = set()
    chosen: dict[int, list[tuple[float, int]]] = {g: [] for g in range(num_gt)}
    for flat in order:
        query, gt = flat_queries[flat], flat % num_gt  # row-major [K, M]: column = GT
        if query in taken or len(chosen[gt]) >= per_gt:
            continue
        taken.add(query)
        chosen[gt].append((flat_values[flat], query))
    query_idx = [q for g in range(num_gt) for _, q in sorted(chosen[g])]
    gt_idx = [g for g in range(num_gt) for _ in chosen[g]]
    return torch.tensor(query_idx, dtype=torch.int64), torch.tensor(gt_idx, dtype=torch.int64)


def build_group(
    name: str,
    selections: list[Assignment],
    content: torch.Tensor,
    position: torch.Tensor,
) -> tuple[QueryGroup, list[Assignment]] | None:
    """A query group of the selected teacher queries and its fixed assignment.

    content [B,Q,D] and position [B,Q,P] are the teacher's (detached here); images with fewer
    selected queries than the largest are padded with zero content and a neutral position
    (unassigned, so trained as background). None when no image selected any query.
    """
    size = max((len(q) for q, _ in selections), default=0)
    if size == 0:
        return None
    batch, _, dim = content.shape
    group_content = content.new_zeros(batch, size, dim)
    group_position = position.new_zeros(batch, size, position.shape[-1])
    if position.shape[-1] == 4:  # anchors: a centred box, not a degenerate one
        group_position[..., :2] = 0.5
        group_position[..., 2:] = 0.5
    assignment: list[Assignment] = []
    for b, (queries, gts) in enumerate(selections):
        index = queries.to(content.device)
        group_content[b, : len(queries)] = content[b, index].detach()
        group_position[b, : len(queries)] = position[b, index].detach()
        assignment.append((torch.arange(len(queries), dtype=torch.int64), gts))
    return QueryGroup(name, group_content, group_position), assignment


def auxiliary_groups(
    teacher_out: DetrOutput,
    targets: list[dict],
    matcher,
    anchors: bool,
    per_gt: int = 2,
    pooled: bool = False,
) -> list[tuple[QueryGroup, list[Assignment]]]:
    """The auxiliary groups of one batch: one per teacher stage (`od_aux_s{k}`), or all stages
    pooled into one (`od_aux`). Content is the stage's hidden state; position is the stage's box
    for anchor models and the query's own positional embedding otherwise."""
    per_stage = []
    for k in range(teacher_out.num_stages):
        costs = matcher.cost_matrices(teacher_out.logits[k], teacher_out.boxes[k], targets)
        selections = [select_queries(c, per_gt) for c in costs]
        position = teacher_out.boxes[k] if anchors else teacher_out.init_position
        per_stage.append((selections, teacher_out.hidden[k], position))
    if pooled:
        offsets = [k * teacher_out.logits.shape[2] for k in range(len(per_stage))]
        selections = [
            (
                torch.cat(
                    [s[b][0] + off for (s, _, _), off in zip(per_stage, offsets, strict=True)]
                ),
                torch.cat([s[b][1] for s, _, _ in per_stage]),
            )
            for b in range(len(targets))
        ]
        content = torch.cat([c for _, c, _ in per_stage], 1)  # [B, L*Q, D]
        position = torch.cat([p for _, _, p in per_stage], 1)
        built = build_group("od_aux", selections, content, position)
        return [built] if built is not None else []
    groups = []
    for k, (selections, content, position) in enumerate(per_stage):
        built = build_group(f"od_aux_s{k}", selections, content, position)
        if built is not None:
            groups.append(built)
    return groups
