"""Matching instability (Li et al., DN-DETR), measured for every run.

On a fixed probe subset of training images (deterministic eval transform), the last decoder
stage's Hungarian match says which ground-truth box each query slot takes (-1 for none).
Between two measurements:
- instability: the number of slots whose box changed, averaged over images (lower is stabler);
- gt_flip_rate: the share of ground-truth boxes whose matched slot changed.
Also, at each measurement, cross_stage_consistency: the share of ground-truth boxes matched to
the same slot by the last two decoder stages; and where an EMA teacher exists (OD-DETR),
teacher_agreement: the share of ground-truth boxes the student and the EMA model match to the
same slot. The student's metrics are `stability/*`, the EMA model's `stability_ema/*`.

A slot is the query index, except for two-stage models, whose queries are re-selected per
image: there a slot is the encoder token the query came from (`extras["selected_tokens"]`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detr_models.batch import Batch
from detr_models.build import unwrap


def _slots(out: Any, batch_index: int, query_index: torch.Tensor) -> list[int]:
    tokens = out.extras.get("selected_tokens")
    if tokens is None:
        return query_index.tolist()
    return tokens[batch_index].cpu()[query_index].tolist()


class MatchingStability:
    """Keeps the previous measurement's assignments; `measure` returns the metrics."""

    def __init__(self, probe_batches: list[Batch], prefix: str = "stability/") -> None:
        self.probe_batches = probe_batches
        self.prefix = prefix
        self.previous: dict[int, dict[int, int]] | None = None  # image id -> slot -> gt

    @torch.no_grad()
    def measure(
        self, model: nn.Module, matcher: nn.Module, device: torch.device
    ) -> dict[str, float]:
        model = unwrap(model)
        was_training = model.training
        model.eval()
        current: dict[int, dict[int, int]] = {}
        same, total = 0, 0
        for batch in self.probe_batches:
            batch = batch.to(device)
            out = model(batch.images, batch.pixel_mask)
            last = matcher(out.logits[-1].float(), out.boxes[-1].float(), batch.targets)
            before = (
                matcher(out.logits[-2].float(), out.boxes[-2].float(), batch.targets)
                if out.num_stages > 1
                else last
            )
            for b, target in enumerate(batch.targets):
                queries, gts = last[b]
                current[target["image_id"]] = dict(
                    zip(_slots(out, b, queries), gts.tolist(), strict=True)
                )
                by_gt_last = dict(zip(gts.tolist(), queries.tolist(), strict=True))
                by_gt_before = dict(zip(before[b][1].tolist(), before[b][0].tolist(), strict=True))
                same += sum(by_gt_before.get(g) == q for g, q in by_gt_last.items())
                total += len(by_gt_last)
        model.train(was_training)
        metrics = {"cross_stage_consistency": same / total if total else 1.0}
        if self.previous is not None:
            metrics.update(compare_assignments(self.previous, current))
        metrics = {self.prefix + k: v for k, v in metrics.items()}
        self.previous = current
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = state.get("previous")


def compare_assignments(
    previous: dict[int, dict[int, int]], current: dict[int, dict[int, int]]
) -> dict[str, float]:
    changed_slots, images, flipped, gts = 0, 0, 0, 0
    for image_id, now in current.items():
        before = previous.get(image_id, {})
        slots = set(now) | set(before)
        changed_slots += sum(now.get(s, -1) != before.get(s, -1) for s in slots)
        images += 1
        slot_of_now = {g: s for s, g in now.items()}
        slot_of_before = {g: s for s, g in before.items()}
        for g in set(slot_of_now) | set(slot_of_before):
            flipped += slot_of_now.get(g) != slot_of_before.get(g)
            gts += 1
    return {
        "instability": changed_slots / max(images, 1),
        "gt_flip_rate": flipped / max(gts, 1),
    }


def assignment_agreement(
    first: dict[int, dict[int, int]], second: dict[int, dict[int, int]]
) -> float:
    """Share of ground-truth boxes matched to the same slot in two measurements (e.g. the
    student's and the EMA teacher's latest), 1.0 when there are none."""
    same, total = 0, 0
    for image_id, slots in first.items():
        slot_of = {g: s for s, g in second.get(image_id, {}).items()}
        for slot, gt in slots.items():
            same += slot_of.get(gt) == slot
            total += 1
    return same / total if total else 1.0
