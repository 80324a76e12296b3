"""An exponential moving average (EMA) of a model: OD-DETR's online teacher.

After every optimiser step, theta' <- lam_t * theta' + (1 - lam_t) * theta, where
lam_t = lam, or with warm-up lam_t = min(lam, (1 + t) / (10 + t)) for the t-th update, so that the
average follows the fast-changing early student closely. Floating-point buffers are averaged
like parameters; other buffers (counters) are copied.

Under DDP every rank holds the same synchronised student weights after `optimizer.step()`, so
every rank's EMA stays identical without communication.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from detr_models.build import unwrap


def ema_decay(decay: float, updates: int, warmup: bool) -> float:
    """The decay used for update number `updates` (0 for the first)."""
    if not warmup:
        return decay
    return min(decay, (1 + updates) / (10 + updates))


class EmaTeacher(nn.Module):
    """Holds the averaged copy (`model`, frozen, eval mode) and the update count.

    Both are in the state dict, so a checkpoint restores the EMA exactly.
    """

    def __init__(self, student: nn.Module, decay: float = 0.9997, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(unwrap(student)).eval().requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> EmaTeacher:
        super().train(mode)
        self.model.eval()  # the teacher always runs in eval mode
        return self

    def current_decay(self) -> float:
        return ema_decay(self.decay, int(self.updates), self.warmup)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Average the student's current weights in (call after each optimiser step)."""
        decay = self.current_decay()
        own = self.model.state_dict()
        for name, value in unwrap(student).state_dict().items():
            target = own[name]
            if target.dtype.is_floating_point:
                target.mul_(decay).add_(value.detach().to(target.dtype), alpha=1.0 - decay)
            else:
                target.copy_(value)
        self.updates += 1

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        self.model.eval()
        return self.model(*args, **kwargs)
