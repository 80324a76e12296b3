"""Optional contrastive query term (switched on in DETRDistill's official code, not described in
the paper): the student's hidden state for each teacher query in the query-prior group should
be closer to that query's teacher hidden state than to the teacher's other queries (InfoNCE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_query_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """student_hidden [B,Q,D] (already at the teacher width), teacher_hidden [B,Q,D] -> scalar.

    For each image, query i's positive is teacher query i and its negatives are the teacher's
    other queries; the loss is the mean cross-entropy over queries and images.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s = F.normalize(student_hidden.float(), dim=-1)
    t = F.normalize(teacher_hidden.detach().float(), dim=-1)
    logits = torch.einsum("bqd,bkd->bqk", s, t) / temperature  # [B,Q,Q]
    labels = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())
