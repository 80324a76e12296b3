"""`detrdistill compare`: the teacher / baseline / distilled story in one command.

Trains the teacher spec unless its registered model already exists, then runs every student
spec from scratch (same seed and epochs as written in the specs), and prints and logs a table of
validation AP and AP50 beside each model's size and speed (parameters, GFLOPs at the eval size,
onnxruntime and PyTorch CPU latency at batch 1): teacher, then each student.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import tracking
from orchestrator.data.build import data_paths
from orchestrator.deploy.cost import deploy_cost
from orchestrator.errors import UserInputError
from orchestrator.launch.inference import evaluate_model
from orchestrator.launch.run import run_experiment
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.training.model_source import load_model

logger = logging.getLogger("detrdistill")


@dataclass
class Row:
    """One line of the comparison: a model's AP and, when measured, its deployment cost."""

    name: str
    ap: float | None
    ap50: float | None
    cost: dict[str, Any] | None = None


def format_table(rows: list[Row]) -> str:
    """The comparison as aligned text, with a footnote saying how latency was measured."""
    header = f"{'model':<34}{'AP':>7}{'AP50':>7}{'params M':>10}{'GFLOPs':>8}{'ORT ms':>8}{'torch ms':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        cost = row.cost or {}
        lines.append(
            f"{row.name:<34}{_cell(row.ap, 7, 3)}{_cell(row.ap50, 7, 3)}"
            f"{_cell(cost.get('params_M'), 10, 2)}{_cell(cost.get('gflops'), 8, 2)}"
            f"{_cell(cost.get('onnx_ms'), 8, 1)}{_cell(cost.get('torch_ms'), 9, 1)}"
        )
    measured = next((row.cost for row in rows if row.cost), None)
    if measured:
        lines.append(
            f"(GFLOPs and latency at {measured['size']}x{measured['size']}, batch 1, "
            f"{measured['threads']} CPU threads, median of timed runs; ORT = onnxruntime)"
        )
    return "\n".join(lines)


def _cell(value: float | None, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'n/a':>{width}}"


def model_cost(source: str, uri: str | None, size: int) -> dict[str, Any] | None:
    """The deployment cost of the model at `source` at a `size` square (None, with a warning,
    when it cannot be measured)."""
    try:
        model, payload = load_model(source, tracking_uri=uri)
        return deploy_cost(model.eval(), payload["extra"], size=size)
    except UserInputError as err:
        logger.warning(f"no size and speed for {source}: {err}")
        return None


def run_comparison(
    teacher: ExperimentSpec,
    students: list[ExperimentSpec],
    address: str | None = None,
    storage: Path = Path("runs"),
    retrain_teacher: bool = False,
    cost: bool = True,
) -> list[Row]:
    """Teacher (trained or reused from the registry), then each student from scratch; `cost`
    measures each model's size and speed at the teacher spec's eval size."""
    uri = teacher.mlflow.tracking_uri
    name = teacher.mlflow.register_as
    version = None if (retrain_teacher or not name) else tracking.latest_version(uri, name)
    if version is None:
        run_experiment(teacher, restart=True, address=address, storage_path=storage)
        version = tracking.latest_version(uri, name) if name else None
    else:
        logger.info(f"reusing the teacher models:/{name}/{version} from the registry")
    size = teacher.data.eval_size
    rows: list[Row] = []
    if version is not None:
        images, annotations = data_paths(teacher.data)["val"]
        source = f"models:/{name}/{version}"
        scores = evaluate_model(source, images, annotations, uri, quiet=True)
        rows.append(
            Row(
                f"teacher ({teacher.student.architecture})",
                scores["AP"],
                scores["AP50"],
                model_cost(source, uri, size) if cost else None,
            )
        )
    for spec in students:
        result = run_experiment(
            spec, run_name=f"seed{spec.seed}", restart=True, address=address, storage_path=storage
        )
        measured = None
        if cost and result.model_file is not None:
            measured = model_cost(str(result.model_file), uri, size)
        label = f"{spec.name} ({spec.distill.method})"
        metrics = result.metrics
        rows.append(Row(label, metrics.get("val/AP"), metrics.get("val/AP50"), measured))
        if "val_ema/AP" in metrics:  # OD-DETR: its EMA model too (same architecture and size)
            rows.append(
                Row(f"{spec.name} (EMA)", metrics["val_ema/AP"], metrics["val_ema/AP50"], measured)
            )
    table = format_table(rows)
    logger.info("\n" + table)
    experiment = tracking.ensure_experiment(uri, "comparisons")
    run_id, _ = tracking.find_or_create_run(
        uri, experiment, f"compare-{teacher.name}", f"compare-{teacher.name}", {}
    )
    run_logger = tracking.RunLogger(uri, run_id)
    run_logger.text(table, "comparison.txt")
    for row in rows:
        key = row.name.split(" ")[0] + ("-ema" if row.name.endswith("(EMA)") else "")
        values = {f"{key}/AP": row.ap or 0.0, f"{key}/AP50": row.ap50 or 0.0}
        for field in ("params_M", "gflops", "onnx_ms", "torch_ms"):
            if row.cost:
                values[f"{key}/{field}"] = float(row.cost[field])
        run_logger.metrics(values, step=0)
    run_logger.finish()
    return rows
