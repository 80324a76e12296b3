"""Who runs the fit loop: the `Reporter` protocol it is written against, and `LocalReporter`,
the no-Ray runner (tests, benchmarks, a laptop). Ray Train and Ray Tune reporters live in
`orchestrator.launch.worker`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Protocol


class Reporter(Protocol):
    """What the loop needs from whoever runs it (Ray Train, Ray Tune, a test).

    `owner` names the Tune trial that writes the checkpoints (None outside PBT): a checkpoint
    of another owner at resume means PBT copied it over (an exploit)."""

    rank: int
    owner: str | None

    def resume_dir(self) -> Path | None: ...

    def new_checkpoint_dir(self, epoch: int) -> Path: ...

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


class LocalReporter:
    """Runs the loop in this process: checkpoints in `folder` (the latest is kept), every
    epoch's metrics in `history`; `resume` is a checkpoint folder to continue from."""

    rank = 0
    owner = None

    def __init__(self, folder: str | Path | None = None, resume: str | Path | None = None) -> None:
        self._tmp = None if folder else tempfile.TemporaryDirectory()
        self.folder = Path(folder or self._tmp.name)
        self.resume = Path(resume) if resume is not None else None
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: Path | None = None

    def resume_dir(self) -> Path | None:
        return self.resume

    def new_checkpoint_dir(self, epoch: int) -> Path:
        path = self.folder / f"epoch_{epoch:04d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is None:
            return
        if self.last_checkpoint not in (None, checkpoint_dir):
            shutil.rmtree(self.last_checkpoint, ignore_errors=True)
        self.last_checkpoint = checkpoint_dir

    def metric(self, key: str) -> list[float]:
        """Every reported value of `key`, in order."""
        return [m[key] for m in self.history if key in m]
