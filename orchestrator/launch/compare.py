"""`detrdistill compare`: the teacher / baseline / distilled story in one command.

Trains the teacher spec unless its registered model already exists, then runs every student
spec from scratch (same seed and epochs as written in the specs), and prints and logs a table of
validation AP and AP50: teacher, then each student.
"""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator import tracking
from orchestrator.data.build import data_paths
from orchestrator.launch.inference import evaluate_model
from orchestrator.launch.run import run_experiment
from orchestrator.spec.sections import ExperimentSpec

logger = logging.getLogger("detrdistill")


def format_table(rows: list[tuple[str, float | None, float | None]]) -> str:
    lines = [f"{'model':<34}{'AP':>8}{'AP50':>8}", "-" * 50]
    for name, ap, ap50 in rows:
        cell = lambda v: f"{v:8.3f}" if v is not None else f"{'n/a':>8}"  # noqa: E731
        lines.append(f"{name:<34}{cell(ap)}{cell(ap50)}")
    return "\n".join(lines)


def run_comparison(
    teacher: ExperimentSpec,
    students: list[ExperimentSpec],
    address: str | None = None,
    storage: Path = Path("runs"),
    retrain_teacher: bool = False,
) -> list[tuple[str, float | None, float | None]]:
    """Teacher (trained or reused from the registry), then each student from scratch."""
    uri = teacher.mlflow.tracking_uri
    name = teacher.mlflow.register_as
    version = None if (retrain_teacher or not name) else tracking.latest_version(uri, name)
    if version is None:
        run_experiment(teacher, restart=True, address=address, storage_path=storage)
        version = tracking.latest_version(uri, name) if name else None
    else:
        logger.info(f"reusing the teacher models:/{name}/{version} from the registry")
    rows: list[tuple[str, float | None, float | None]] = []
    if version is not None:
        images, annotations = data_paths(teacher.data)["val"]
        scores = evaluate_model(f"models:/{name}/{version}", images, annotations, uri, quiet=True)
        rows.append((f"teacher ({teacher.student.architecture})", scores["AP"], scores["AP50"]))
    for spec in students:
        result = run_experiment(
            spec, run_name=f"seed{spec.seed}", restart=True, address=address, storage_path=storage
        )
        label = f"{spec.name} ({spec.distill.method})"
        rows.append((label, result.metrics.get("val/AP"), result.metrics.get("val/AP50")))
        if "val_ema/AP" in result.metrics:  # OD-DETR: its EMA model too
            rows.append(
                (f"{spec.name} (EMA)", result.metrics["val_ema/AP"], result.metrics["val_ema/AP50"])
            )
    table = format_table(rows)
    logger.info("\n" + table)
    experiment = tracking.ensure_experiment(uri, "comparisons")
    run_id, _ = tracking.find_or_create_run(
        uri, experiment, f"compare-{teacher.name}", f"compare-{teacher.name}", {}
    )
    run_logger = tracking.RunLogger(uri, run_id)
    run_logger.text(table, "comparison.txt")
    for label, ap, ap50 in rows:
        key = label.split(" ")[0] + ("-ema" if label.endswith("(EMA)") else "")
        run_logger.metrics({f"{key}/AP": ap or 0.0, f"{key}/AP50": ap50 or 0.0}, step=0)
    run_logger.finish()
    return rows
