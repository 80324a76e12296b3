"""`detrdistill compare`: the teacher / baseline / distilled story in one command.

Trains the teacher spec unless its registered model already exists, then runs every student
spec from scratch (same seed and epochs as written in the specs), and prints and logs a table of
validation AP and AP50 beside each model's size and speed (parameters, GFLOPs at the eval size,
onnxruntime and PyTorch CPU latency at batch 1): teacher, then each student. In MLflow it is one
parent run in the `comparisons` experiment, with the teacher / baseline / distilled runs as its
children, the table (`mlflow.log_table` and markdown), and tags linking runs and models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import registry, tracking
from orchestrator.data.build import data_paths
from orchestrator.deploy.cost import deploy_cost
from orchestrator.errors import UserInputError
from orchestrator.launch.compare_delta import SEED_NOTE, delta_lines
from orchestrator.launch.inference import evaluate_model
from orchestrator.launch.run import ParentRun, role_of, run_experiment
from orchestrator.launch.session import ACTIVE_RUNS
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
    role: str = ""
    run_id: str | None = None
    model: str | None = None  # a student's model file, for the paired bootstrap


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


def recorded_cost(tags: dict[str, str], size: int) -> dict[str, Any] | None:
    """The cost a registered version already carries (its export measured it, at `size`);
    None when it has none or was measured at another size."""
    needed = ("params_M", "gflops", "onnx_cpu_ms", "torch_cpu_ms", "latency_size", "cpu_threads")
    if not all(key in tags for key in needed) or tags["latency_size"] != str(size):
        return None
    return {
        "params_M": float(tags["params_M"]),
        "gflops": float(tags["gflops"]),
        "onnx_ms": float(tags["onnx_cpu_ms"]),
        "torch_ms": float(tags["torch_cpu_ms"]),
        "size": size,
        "threads": int(tags["cpu_threads"]),
    }


def roles(students: list[ExperimentSpec]) -> list[str]:
    """Child-run names: `baseline` (no distillation) or `distilled`; where several students
    share one, the first of method, spec name, spec name and seed that tells them apart."""
    base = [role_of(spec).replace("trained", "baseline") for spec in students]
    details = (
        lambda spec: spec.distill.method,
        lambda spec: spec.name,
        lambda spec: f"{spec.name}-seed{spec.seed}",
    )
    names = []
    for index, (role, spec) in enumerate(zip(base, students, strict=True)):
        same = [other for other, r in zip(students, base, strict=True) if r == role]
        if len(same) == 1:
            names.append(role)
            continue
        detail = next((d for d in details if len({d(s) for s in same}) == len(same)), None)
        names.append(f"{role}-{detail(spec)}" if detail else f"{role}-{index + 1}")
    return names


@dataclass
class Comparison:
    """The parent MLflow run of one `compare`, its children linked by tags."""

    uri: str
    experiment: str
    experiment_id: str
    logger: Any

    def child(self, role: str) -> ParentRun:
        return ParentRun(self.experiment, self.logger.run_id, role)

    def link(self, role: str, run_id: str, version: str | None, name: str | None) -> None:
        tags = {f"run.{role}": run_id}
        if version and name:
            tags[f"model.{role}"] = f"models:/{name}/{version}"
        self.logger.tags(tags)


def start_comparison(teacher: ExperimentSpec, students: list[ExperimentSpec]) -> Comparison:
    """The parent run (`comparisons` experiment): an earlier comparison of this teacher and
    its children are replaced."""
    uri = teacher.mlflow.tracking_uri
    experiment = "comparisons"
    experiment_id = tracking.ensure_experiment(
        uri,
        experiment,
        "`detrdistill compare`: one parent run per comparison (the table, links to its runs "
        "and registered models), with the teacher, baseline and distilled runs as children.",
    )
    key = f"compare-{teacher.name}"
    tracking.delete_run_tree(uri, experiment_id, key)
    run_id, _ = tracking.find_or_create_run(
        uri,
        experiment_id,
        key,
        f"{teacher.name} comparison",
        {"git_commit": tracking.git_commit(Path(__file__).parent)},
    )
    run_logger = tracking.RunLogger(uri, run_id)
    ACTIVE_RUNS.append(run_logger)
    params = {"teacher.spec": teacher.name, "teacher.architecture": teacher.student.architecture}
    for role, spec in zip(roles(students), students, strict=True):
        params.update(
            {
                f"{role}.spec": spec.name,
                f"{role}.method": spec.distill.method,
                f"{role}.architecture": spec.student.architecture,
                f"{role}.epochs": str(spec.train.epochs),
                f"{role}.seed": str(spec.seed),
            }
        )
    run_logger.params(params)
    return Comparison(uri, experiment, experiment_id, run_logger)


def run_comparison(
    teacher: ExperimentSpec,
    students: list[ExperimentSpec],
    address: str | None = None,
    storage: Path = Path("runs"),
    retrain_teacher: bool = False,
    cost: bool = True,
) -> list[Row]:
    """Teacher (trained or reused from the registry), then each student from scratch, all as
    children of one comparison run; `cost` measures each model's size and speed at the
    teacher spec's eval size (read from its registered version when its export measured
    it)."""
    comparison = start_comparison(teacher, students)
    try:
        rows = _compare(comparison, teacher, students, address, storage, retrain_teacher, cost)
    except BaseException:
        if comparison.logger in ACTIVE_RUNS:  # a stop signal closes it as KILLED
            comparison.logger.finish("FAILED")
            ACTIVE_RUNS.remove(comparison.logger)
        raise
    table = format_table(rows)
    images, annotations = data_paths(teacher.data)["val"]
    deltas = delta_lines(rows, images, annotations, comparison.uri)
    notes = [d["line"] for d in deltas] + ([SEED_NOTE] if deltas else [])
    logger.info("\n" + "\n".join([table, *notes]))
    comparison.logger.text("\n\n".join([markdown_table(rows), *notes]), "comparison.md")
    comparison.logger.table(table_columns(rows), "comparison.json")
    comparison.logger.finish()
    ACTIVE_RUNS.remove(comparison.logger)
    return rows


def _compare(
    comparison: Comparison,
    teacher: ExperimentSpec,
    students: list[ExperimentSpec],
    address: str | None,
    storage: Path,
    retrain_teacher: bool,
    cost: bool,
) -> list[Row]:
    uri = comparison.uri
    name = teacher.mlflow.register_as
    version = None if (retrain_teacher or not name) else registry.latest_version(uri, name)
    size = teacher.data.eval_size
    rows: list[Row] = []
    if version is None:
        result = run_experiment(
            teacher,
            restart=True,
            address=address,
            storage_path=storage,
            parent=comparison.child("teacher"),
        )
        version = result.registered_version
        teacher_run = result.mlflow_run_id
    else:
        logger.info(f"reusing the teacher models:/{name}/{version} from the registry")
        teacher_run = None
    if version is not None:
        images, annotations = data_paths(teacher.data)["val"]
        source = f"models:/{name}/{version}"
        scores = evaluate_model(source, images, annotations, uri, quiet=True)
        measured = _cost(uri, name, version, source, size) if cost else None
        if teacher_run is None:
            teacher_run = _reused_teacher_run(comparison, teacher, name, version, scores)
        label = f"teacher ({teacher.student.architecture})"
        rows.append(Row(label, scores["AP"], scores["AP50"], measured, "teacher", teacher_run))
        comparison.link("teacher", teacher_run, version, name)
    for role, spec in zip(roles(students), students, strict=True):
        result = run_experiment(
            spec,
            run_name=f"seed{spec.seed}",
            restart=True,
            address=address,
            storage_path=storage,
            parent=comparison.child(role),
        )
        comparison.link(
            role, result.mlflow_run_id, result.registered_version, spec.mlflow.register_as
        )
        measured = None
        if cost and result.model_file is not None:
            name, version = spec.mlflow.register_as, result.registered_version
            measured = _cost(uri, name, version, str(result.model_file), size)
        label = f"{spec.name} ({spec.distill.method})"
        metrics = result.metrics
        rows.append(
            Row(
                label,
                metrics.get("val/AP"),
                metrics.get("val/AP50"),
                measured,
                role,
                result.mlflow_run_id,
                None if result.model_file is None else str(result.model_file),
            )
        )
        if "val_ema/AP" in metrics:  # OD-DETR: its EMA model too (same architecture and size)
            rows.append(
                Row(
                    f"{spec.name} (EMA)",
                    metrics["val_ema/AP"],
                    metrics["val_ema/AP50"],
                    measured,
                    f"{role}-ema",
                    result.mlflow_run_id,
                )
            )
    return rows


def _cost(
    uri: str, name: str | None, version: str | None, source: str, size: int
) -> dict[str, Any] | None:
    """The cost the registered version carries, else measured on the model at `source`."""
    recorded = recorded_cost(registry.version_tags(uri, name, version), size) if version else None
    return recorded or model_cost(source, uri, size)


def _reused_teacher_run(
    comparison: Comparison,
    teacher: ExperimentSpec,
    name: str,
    version: str,
    scores: dict[str, float],
) -> str:
    """A `teacher` child run for a teacher taken from the registry: it trains nothing; it
    holds the teacher's validation `scores` and links to the version and the run that
    trained it."""
    uri = comparison.uri
    run_id, _ = tracking.find_or_create_run(
        uri,
        comparison.experiment_id,
        f"compare-{teacher.name}/teacher",
        "teacher",
        {"role": "teacher", "architecture": teacher.student.architecture},
        comparison.logger.run_id,
    )
    run_logger = tracking.RunLogger(uri, run_id)
    source_run = registry.version_run(uri, name, version)
    run_logger.tags(
        {"model": f"models:/{name}/{version}", "trained_by_run": source_run or "unknown"}
    )
    run_logger.params({"model.architecture": teacher.student.architecture, "spec": teacher.name})
    run_logger.metrics({f"val/{k}": v for k, v in scores.items()}, step=0)
    run_logger.finish()
    return run_id


def markdown_table(rows: list[Row]) -> str:
    """The comparison as a markdown table (the run's `comparison.md`)."""
    columns = table_columns(rows)
    names = list(columns)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for i in range(len(rows)):
        cells = [columns[n][i] for n in names]
        lines.append(
            "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"
        )
    return "\n".join(lines) + "\n"


def table_columns(rows: list[Row]) -> dict[str, list]:
    """The comparison column by column (`mlflow.log_table`); missing values are None."""

    def cost(row: Row, key: str) -> float | None:
        return float(row.cost[key]) if row.cost else None

    return {
        "role": [row.role for row in rows],
        "model": [row.name for row in rows],
        "AP": [row.ap for row in rows],
        "AP50": [row.ap50 for row in rows],
        "params_M": [cost(row, "params_M") for row in rows],
        "GFLOPs": [cost(row, "gflops") for row in rows],
        "ORT_ms": [cost(row, "onnx_ms") for row in rows],
        "torch_ms": [cost(row, "torch_ms") for row in rows],
        "run_id": [row.run_id for row in rows],
    }
