"""The contract between the training engine and the methods: `Progress` (where training is)
and `TrainingObjective`, whose call turns (model, batch, progress) into named loss tensors and
diagnostics. Plain detection training is the simplest objective; DETRDistill, OD-DETR and their
combination are the others (see `distill.methods`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detr_models.batch import Batch
from detr_models.build import unwrap
from detr_models.criterion import SetCriterion, encoder_proposal_losses, num_boxes
from detr_models.denoising import denoising_losses
from detr_models.output import DetrOutput, QueryGroup

Losses = dict[str, torch.Tensor]
Diagnostics = dict[str, float | torch.Tensor]  # tensors stay on the device (summed there)


@dataclass
class Progress:
    """Where training is: objectives use it for loss schedules."""

    epoch: int
    iteration: int
    iters_per_epoch: int
    epochs: int

    @property
    def fraction(self) -> float:
        """Share of training done, in [0, 1]."""
        return (self.epoch * self.iters_per_epoch + self.iteration) / max(
            1, self.epochs * self.iters_per_epoch
        )


class TrainingObjective(nn.Module):
    """One training step's losses, in three declared parts that methods override and that
    `CombinedDistill` composes:

    - `prepare(batch, progress) -> (state, groups)`: run the teacher side, pick the extra
      query groups the student decodes with its own queries;
    - `main_losses(s_out, state, batch)`: the loss of the student's main queries (the plain
      set-prediction loss here, plus two-stage encoder proposals);
    - `distill_losses(s_out, state, batch)`: the weighted distillation terms (`distill_*`).

    Its own parameters (adapters) train with the student; `teacher_model` / `ema_model` are
    the frozen teacher and the EMA teacher where the method has them (evaluated beside the
    student). `after_step()` runs after every optimiser step.
    """

    def __init__(self, criterion: SetCriterion) -> None:
        super().__init__()
        self.criterion = criterion

    @property
    def teacher_model(self) -> nn.Module | None:
        return None

    @property
    def ema_model(self) -> nn.Module | None:
        return None

    def after_step(self) -> None:
        pass

    def prepare(self, batch: Batch, progress: Progress) -> tuple[Any, list[QueryGroup]]:
        return None, []

    def main_losses(
        self, s_out: DetrOutput, state: Any, batch: Batch
    ) -> tuple[Losses, Diagnostics]:
        losses, _ = self.criterion(s_out, batch.targets)
        losses.update(encoder_proposal_losses(self.criterion, s_out, batch.targets))
        return losses, {}

    def distill_losses(
        self, s_out: DetrOutput, state: Any, batch: Batch
    ) -> tuple[Losses, Diagnostics]:
        return {}, {}

    def forward(
        self, model: nn.Module, batch: Batch, progress: Progress
    ) -> tuple[Losses, Diagnostics]:
        state, groups = self.prepare(batch, progress)
        denoises = getattr(unwrap(model), "denoising", None) is not None
        extra = {"targets": batch.targets} if denoises else {}
        s_out = model(batch.images, batch.pixel_mask, groups or None, **extra)
        losses, diagnostics = self.main_losses(s_out, state, batch)
        if denoises:  # the normaliser is a collective: every worker computes it
            norm = num_boxes(batch.targets, batch.images.device)
            if s_out.denoising is not None:
                group = s_out.denoising_group
                losses.update(
                    denoising_losses(self.criterion, s_out.denoising, group, batch.targets, norm)
                )
        terms, more = self.distill_losses(s_out, state, batch)
        losses.update(terms)
        diagnostics.update(more)
        return losses, diagnostics


class DetectionObjective(TrainingObjective):
    """Plain set-prediction training against ground truth (`distill: none`). Two-stage models
    also train their encoder proposals (`enc_` losses), as Deformable DETR does. With an
    `EmaTeacher` (distill.ema) the EMA of the weights is kept, evaluated and exportable: the
    same object OD-DETR uses as its teacher, here only averaged, never distilled from."""

    def __init__(
        self,
        criterion: SetCriterion,
        ema: nn.Module | None = None,
        student: nn.Module | None = None,
    ) -> None:
        super().__init__(criterion)
        if (ema is None) != (student is None):
            raise ValueError("an EMA needs the student it averages, and only then")
        self.ema = ema
        self.student = [student]  # a list keeps it out of this module's state dict

    @property
    def ema_model(self) -> nn.Module | None:
        return None if self.ema is None else self.ema.model

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.student[0])
