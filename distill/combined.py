"""DETRDistill (offline, frozen teacher) and OD-DETR (online, EMA teacher) in one run.

Both teachers see the same batch; their query groups (`query_prior`, `od_init`, `od_aux_*`) join
the student in one forward pass, never seeing each other. The main queries train with OD-DETR's
matching distillation (or the plain detection loss when it is off) and every DETRDistill and
OD-DETR distillation term is added.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.detrdistill import DETRDistill
from distill.od_detr import ODDETR


class CombinedDistill(nn.Module):
    def __init__(self, offline: DETRDistill, online: ODDETR) -> None:
        super().__init__()
        self.offline = offline
        self.online = online

    @property
    def teacher_model(self) -> nn.Module:
        return self.offline.teacher_model

    @property
    def ema_model(self) -> nn.Module:
        return self.online.ema_model

    def after_step(self) -> None:
        self.online.after_step()

    def forward(
        self, model: nn.Module, batch, progress
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        offline_state, offline_groups = self.offline.prepare(batch, progress)
        online_state, online_groups = self.online.prepare(batch, progress)
        groups = offline_groups + online_groups
        s_out = model(batch.images, batch.pixel_mask, groups or None)
        losses, diagnostics = self.online.main_losses(s_out, online_state, batch)
        for part in (
            self.offline.distill_losses(s_out, offline_state, batch),
            self.online.distill_losses(s_out, online_state, batch),
        ):
            losses.update(part[0])
            diagnostics.update(part[1])
        return losses, diagnostics
