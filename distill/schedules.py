"""Loss-term schedules over training and per-stage weight rules.

A schedule maps training progress (epoch with its fractional part, and the share of training
done) to a multiplier in [0, 1]; stage weights are a list or a rule. Both are spec fields, so
Ray Tune can search them by their dotted path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from detr_models.config import NonNegFloat, StrictConfig
from distill.objective import Progress

STAGE_RULES = ("uniform", "last_only", "increasing")


class Schedule(StrictConfig):
    """Multiplier over training: constant; warmup (linear 0 -> 1 over `warmup_epochs`); step
    (0 before `start_epoch`, 1 from it); cosine (1 -> 0 over the whole run)."""

    kind: Literal["constant", "warmup", "step", "cosine"] = "constant"
    warmup_epochs: NonNegFloat = 0.0
    start_epoch: NonNegFloat = 0.0

    def __call__(self, epoch: float, fraction: float) -> float:
        if self.kind == "warmup":
            return 1.0 if self.warmup_epochs <= 0 else min(1.0, epoch / self.warmup_epochs)
        if self.kind == "step":
            return 1.0 if epoch >= self.start_epoch else 0.0
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
        return 1.0


StageWeights = Literal["uniform", "last_only", "increasing"] | list[NonNegFloat]


class TermConfig(StrictConfig):
    """A distillation term: on/off, weight, class/L1/GIoU sub-weights, stage weights (a list,
    one per stage, or a rule), schedule."""

    enabled: bool = True
    weight: NonNegFloat = 1.0
    cls: NonNegFloat = 1.0
    bbox: NonNegFloat = 5.0
    giou: NonNegFloat = 2.0
    stage_weights: StageWeights = "uniform"
    schedule: Schedule = Field(default_factory=Schedule)

    def scale(self, progress: Progress) -> float:
        """weight x schedule at `progress`, 0 when disabled."""
        return self.weight * schedule_factor(self.enabled, self.schedule, progress)


def schedule_factor(enabled: bool, schedule: Schedule, progress: Progress) -> float:
    """A term's schedule multiplier at `progress`, 0 when disabled."""
    if not enabled:
        return 0.0
    epoch = progress.epoch + progress.iteration / max(1, progress.iters_per_epoch)
    return schedule(epoch, progress.fraction)


def part_totals(losses: dict, parts: Sequence[str]) -> dict[str, torch.Tensor]:
    """`distill_<part>_total`: the sum of the `distill_<part>*` loss terms, for each part
    present, as detached tensors (the engine sums them on the device: no sync per step)."""
    totals = {}
    for part in parts:
        keys = [k for k in losses if k.startswith(f"distill_{part}")]
        if keys:
            totals[f"distill_{part}_total"] = sum(losses[k].detach() for k in keys)
    return totals


def stage_weights(rule: str | Sequence[float], num_stages: int) -> list[float]:
    """Weights for `num_stages` stages from a list (its length must match) or a rule:
    uniform (all 1), last_only (0 ... 0 1), increasing (k / L, last = 1)."""
    if not isinstance(rule, str):
        weights = [float(w) for w in rule]
        if len(weights) != num_stages:
            raise ValueError(
                f"stage weights {weights} must have one entry per stage ({num_stages})"
            )
        return weights
    if rule == "uniform":
        return [1.0] * num_stages
    if rule == "last_only":
        return [0.0] * (num_stages - 1) + [1.0]
    if rule == "increasing":
        return [(k + 1) / num_stages for k in range(num_stages)]
    raise ValueError(f"unknown stage-weight rule {rule!r}; use a list or one of {STAGE_RULES}")


def map_stages(num_student: int, num_teacher: int) -> list[int]:
    """The teacher stage that supervises each student stage: spread evenly, last to last.

    E.g. 3 student stages under 6 teacher stages -> [1, 3, 5]; 6 under 3 -> [0, 0, 1, 1, 2, 2].
    """
    return [
        min(num_teacher - 1, math.ceil((k + 1) * num_teacher / num_student) - 1)
        for k in range(num_student)
    ]
