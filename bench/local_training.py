"""Run the training loop in this process, without Ray or MLflow: the plain engine."""

from __future__ import annotations

from pathlib import Path

from orchestrator.console import configure_console
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.training.fit import run_training
from orchestrator.training.reporters import LocalReporter


def train_local(spec: ExperimentSpec, folder: str | Path | None = None) -> LocalReporter:
    """Train `spec` (resolved paths) in this process; the reporter holds metrics and checkpoint."""
    configure_console()  # progress and validation tables, also in pool processes
    reporter = LocalReporter(folder)
    run_training(spec, reporter)
    return reporter
