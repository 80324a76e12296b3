"""Run the training loop in this process, without Ray or MLflow: the plain engine."""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator.spec.sections import ExperimentSpec
from orchestrator.training.fit import run_training


class LocalReporter:
    """Keeps the latest checkpoint in a folder and every epoch's metrics in `history`."""

    rank = 0
    owner = None

    def __init__(self, folder: str | Path | None = None) -> None:
        self._tmp = None if folder else tempfile.TemporaryDirectory()
        self.folder = Path(folder or self._tmp.name)
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: Path | None = None

    def resume_dir(self) -> Path | None:
        return None

    def new_checkpoint_dir(self, epoch: int) -> Path:
        path = self.folder / f"epoch_{epoch:04d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is not None:
            if self.last_checkpoint is not None and self.last_checkpoint != checkpoint_dir:
                for item in self.last_checkpoint.iterdir():
                    item.unlink()
                self.last_checkpoint.rmdir()
            self.last_checkpoint = checkpoint_dir


def train_local(spec: ExperimentSpec, folder: str | Path | None = None) -> LocalReporter:
    """Train `spec` (resolved paths) in this process; the reporter holds metrics and checkpoint."""
    reporter = LocalReporter(folder)
    run_training(spec, reporter)
    return reporter


def metric_history(reporter: LocalReporter, key: str) -> list[float]:
    return [m[key] for m in reporter.history if key in m]
