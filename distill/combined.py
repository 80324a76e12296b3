"""DETRDistill (offline, frozen teacher) and OD-DETR (online, EMA teacher) in one run.

Both teachers see the same batch; their query groups (`query_prior`, `od_init`, `od_aux_*`) join
the student in one forward pass, never seeing each other. The main queries train with OD-DETR's
matching distillation (or the plain detection loss when it is off) and every DETRDistill and
OD-DETR distillation term is added.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from detr_models.batch import Batch
from detr_models.output import DetrOutput, QueryGroup
from distill.detrdistill import DETRDistill, TeacherState
from distill.objective import Diagnostics, Losses, Progress, TrainingObjective
from distill.od_detr import ODDETR, EmaState


@dataclass
class CombinedState:
    offline: TeacherState
    online: EmaState


class CombinedDistill(TrainingObjective):
    """The composition of two objectives through their declared parts (see TrainingObjective)."""

    def __init__(self, offline: DETRDistill, online: ODDETR) -> None:
        super().__init__(online.criterion)
        self.offline = offline
        self.online = online

    @property
    def teacher_model(self) -> nn.Module:
        return self.offline.teacher_model

    @property
    def ema_model(self) -> nn.Module:
        return self.online.ema_model

    def after_step(self) -> None:
        self.offline.after_step()
        self.online.after_step()

    def prepare(self, batch: Batch, progress: Progress) -> tuple[CombinedState, list[QueryGroup]]:
        offline_state, offline_groups = self.offline.prepare(batch, progress)
        online_state, online_groups = self.online.prepare(batch, progress)
        return CombinedState(offline_state, online_state), offline_groups + online_groups

    def main_losses(
        self, s_out: DetrOutput, state: CombinedState, batch: Batch
    ) -> tuple[Losses, Diagnostics]:
        return self.online.main_losses(s_out, state.online, batch)

    def distill_losses(
        self, s_out: DetrOutput, state: CombinedState, batch: Batch
    ) -> tuple[Losses, Diagnostics]:
        losses, diagnostics = self.offline.distill_losses(s_out, state.offline, batch)
        more_losses, more = self.online.distill_losses(s_out, state.online, batch)
        losses.update(more_losses)
        diagnostics.update(more)
        return losses, diagnostics
