"""`TrainingState`: the bookkeeping a run carries from epoch to epoch and through a resume
(epoch, metric history, best AP, last validation, stability trackers, PBT owner), and the
checkpoint's training-state file that holds it with the tensors (model, objective, optimiser,
scheduler, RNG)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from detr_models.build import unwrap
from orchestrator.training import checkpoints


@dataclass
class TrainingState:
    """Where a run is, between epochs."""

    epoch: int = 0  # epochs completed
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    best: float | None = None  # best val/AP so far
    last_eval: dict[str, float] = field(default_factory=dict)
    stability: dict[str, Any] | None = None
    stability_ema: dict[str, Any] | None = None
    owner: str | None = None  # the Tune trial that wrote it (PBT)

    def record(self, metrics: dict[str, float], epoch: int) -> None:
        """Append this epoch's metrics to the history and update the best val AP."""
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((epoch, float(value)))
        ap = self.last_eval.get("val/AP")
        if ap is not None and (self.best is None or ap > self.best):
            self.best = ap

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainingState:
        return cls(**{name: saved.get(name) for name in cls.__dataclass_fields__})


def save_training_checkpoint(
    directory: Path,
    model: nn.Module,
    objective: nn.Module,
    optimizer: Any,
    scheduler: Any,
    rngs: list[dict[str, Any]],
    state: TrainingState,
) -> None:
    """Everything a resume needs (the teacher is never saved: its source is in the spec)."""
    checkpoints.save_training_state(
        directory,
        {
            "model": unwrap(model).state_dict(),
            "objective": objective.state_dict(),  # distillation adapters, the EMA teacher
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rngs,
            **asdict(state),
        },
    )
