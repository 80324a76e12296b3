"""Resuming honestly: a run folder keeps the spec it started with, and the same run name
resumes only with a spec that trains the same way. Fields that are safe to change between
attempts (more epochs, logging cadence, how many checkpoints to keep) are allowed and
recorded; any other difference is refused with the diff."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.errors import UserInputError
from orchestrator.spec.params import flatten_params
from orchestrator.spec.sections import ExperimentSpec

SPEC_FILE = "spec.json"  # in the run's folder under --storage
SAFE_TO_CHANGE = (
    "train.epochs",
    "train.log_every",
    "mlflow.log_images",
    "mlflow.register_as",
    "checkpoint.num_to_keep",
    "scaling.max_failures",
)


def save_started_spec(folder: Path, spec: ExperimentSpec) -> None:
    """Record the spec a run starts with (its flat parameters, plain JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(flatten_params(spec), indent=1, sort_keys=True))


def resume_changes(folder: Path, spec: ExperimentSpec, run_key: str) -> list[str]:
    """The safe changes since the run started, as `path: old -> new` lines; UserInputError
    listing every other change. Nothing recorded (an older run folder): no changes."""
    path = folder / SPEC_FILE
    if not path.is_file():
        return []
    try:
        started = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"{path}: cannot read the spec this run started with ({err})"
        ) from None
    now = flatten_params(spec)
    changed = sorted(k for k in set(started) | set(now) if started.get(k) != now.get(k))
    lines = {k: f"{k}: {started.get(k, '(unset)')} -> {now.get(k, '(unset)')}" for k in changed}
    unsafe = [lines[k] for k in changed if k not in SAFE_TO_CHANGE]
    if unsafe:
        raise UserInputError(
            f"run {run_key} started with a different spec, and resuming it would not train "
            "what either spec says:\n  "
            + "\n  ".join(unsafe)
            + "\nRun again with --restart to start this run over, or give a new --run-name "
            f"(only {', '.join(SAFE_TO_CHANGE)} may change between attempts)"
        )
    return [lines[k] for k in changed]
