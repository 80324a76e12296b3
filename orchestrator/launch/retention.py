"""Which checkpoints of a run stay on disk: the `checkpoint.num_to_keep` best by the score
metric and the `checkpoint.keep_last` latest (a resume needs the latest; an export the best).
A Ray Train callback on the controller, which sees every checkpoint once it is persisted."""

from __future__ import annotations

import logging
import math
from typing import Any

from ray.train.v2.api.callback import UserCallback

logger = logging.getLogger("detrdistill")


def kept(scores: list[float | None], keep_best: int, keep_last: int, mode: str) -> set[int]:
    """Indices (report order) of the checkpoints to keep: the `keep_last` latest and the
    `keep_best` best-scoring ones (None or non-finite scores never count as best; ties go to
    the later one)."""
    last = set(range(max(0, len(scores) - keep_last), len(scores)))
    sign = 1.0 if mode == "max" else -1.0
    scored = [(sign * s, i) for i, s in enumerate(scores) if s is not None and math.isfinite(s)]
    best = {i for _, i in sorted(scored, reverse=True)[:keep_best]}
    return last | best


class CheckpointRetention(UserCallback):
    """Deletes a run's checkpoints outside `kept` as new ones are persisted."""

    def __init__(self, metric: str, mode: str, keep_best: int, keep_last: int) -> None:
        self.metric, self.mode = metric, mode
        self.keep_best, self.keep_last = keep_best, keep_last
        self.checkpoints: list[Any] = []
        self.scores: list[float | None] = []
        self.deleted: set[int] = set()

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        if checkpoint is None:
            return
        value = (metrics[0] if metrics else {}).get(self.metric)
        self.checkpoints.append(checkpoint)
        self.scores.append(float(value) if isinstance(value, int | float) else None)
        keep = kept(self.scores, self.keep_best, self.keep_last, self.mode)
        for index, old in enumerate(self.checkpoints):
            if index in keep or index in self.deleted:
                continue
            try:
                old.filesystem.delete_dir(old.path)
            except Exception as err:  # already gone, or storage refusing: never stop training
                logger.debug(f"could not delete checkpoint {old.path}: {err}")
            self.deleted.add(index)


def existing(checkpoint: Any) -> bool:
    """Whether a checkpoint's folder is still on its storage (retention may have removed it)."""
    from pyarrow.fs import FileType

    try:
        return checkpoint.filesystem.get_file_info(checkpoint.path).type != FileType.NotFound
    except Exception:
        return False
