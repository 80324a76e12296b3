"""`detrdistill run`: check everything, set up MLflow, fit a Ray Train TorchTrainer, export.

The Ray run name is `<spec name>-<run name>`, deterministic, so running the same command after a
crash resumes from the last checkpoint in the same MLflow run; `--restart` starts over.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import registry, tracking
from orchestrator.console import LIVE
from orchestrator.data.build import build_datasets
from orchestrator.errors import DIVERGED, RunFailed, UserInputError
from orchestrator.launch.dataset_input import dataset_inputs
from orchestrator.launch.export import best_checkpoint, export_checkpoint
from orchestrator.launch.local_ray import start_timeout
from orchestrator.launch.resume import resume_changes, save_started_spec
from orchestrator.launch.session import ACTIVE_RUNS, init_ray, shutdown_local_ray, stopped
from orchestrator.launch.worker import build_trainer
from orchestrator.progress_line import duration
from orchestrator.spec.params import run_params, spec_to_yaml
from orchestrator.spec.paths import name_problem
from orchestrator.spec.sections import ExperimentSpec, HfTeacherSpec, TeacherSpec
from orchestrator.training import checkpoints
from orchestrator.training.assemble import load_teacher_model
from orchestrator.training.fit import FAULT_ENV
from orchestrator.training.hf_teacher_source import load_hf_teacher
from orchestrator.training.model_source import check_source_syntax

logger = logging.getLogger("detrdistill")


@dataclass
class RunResult:
    run_key: str
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    best_ap: float | None
    registered_version: str | None
    model_file: Path | None


def preflight(spec: ExperimentSpec) -> int:
    """Checks that need files: datasets open, class counts agree, teacher weights fit.
    Returns the number of classes. Raises UserInputError naming the field."""
    return len(checked_datasets(spec)["train"].class_names)


def checked_datasets(spec: ExperimentSpec) -> dict[str, Any]:
    """`preflight`'s checks; the datasets by split."""
    train_set, val_set = build_datasets(spec.data, verify_images=True)
    for split, dataset in (("train", train_set), ("val", val_set)):
        if len(dataset) == 0:
            raise UserInputError(
                f"data: the {split} split has no images, so the run would train or evaluate "
                "nothing; point data.source at a dataset with images in both splits"
            )
    k = train_set.num_classes
    if val_set.label_to_category != train_set.label_to_category:
        raise UserInputError(
            f"data: train and val categories differ ({train_set.label_to_category} vs "
            f"{val_set.label_to_category}); both splits need the same category list"
        )
    if spec.student.num_classes not in (None, k):
        raise UserInputError(
            f"student.num_classes: {spec.student.num_classes} but the dataset has {k} classes; "
            "set it to match or leave it out"
        )
    if isinstance(spec.teacher, HfTeacherSpec):
        load_hf_teacher(spec, train_set.class_names, report=True)  # loads, classes map, terms run
    elif spec.teacher is not None:
        problem = check_source_syntax(spec.teacher.weights)
        if problem:
            raise UserInputError(f"teacher.weights: {problem}")
        load_teacher_model(spec, train_set.class_names)  # weights fit, classes map
    return {"train": train_set, "val": val_set}


def check_writable(folder: Path, what: str) -> None:
    """That `folder` is, or can be made, a writable folder: a clear error naming the path now,
    not an OSError from deep inside Ray or MLflow later. Creates nothing (a probe file in the
    nearest existing folder is written and removed)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None if existing.is_dir() else f"{existing} is not a folder"
    probe = existing / f".detrdistill-probe-{os.getpid()}"
    try:
        if problem is None:
            probe.write_bytes(b"ok")
            probe.unlink()
    except OSError as err:
        problem = err.strerror or str(err)
    if problem:
        raise UserInputError(
            f"{what} {folder}: cannot write there ({problem}); give a writable folder"
        )


def pin_teacher(spec: ExperimentSpec, recorded: str | None = None) -> ExperimentSpec:
    """The spec with a registered teacher fixed to one version (`models:/name/latest` or an
    alias resolved now; `recorded`, the version a resumed run started with, wins), so that a
    later registration under that name never swaps the teacher. Logged for the user."""
    if not isinstance(spec.teacher, TeacherSpec) or not spec.teacher.weights.startswith("models:/"):
        return spec
    source = spec.teacher.weights
    if recorded is not None and recorded.startswith("models:/"):
        pinned, teacher_run = recorded, None
    else:
        try:
            pinned, teacher_run = registry.pin_model_version(spec.mlflow.tracking_uri, source)
        except Exception as err:
            raise UserInputError(f"teacher.weights: {source}: {str(err)[:300]}") from None
    if pinned != source:
        run = f" (MLflow run {teacher_run})" if teacher_run else ""
        logger.info(f"teacher {source} is {pinned}{run} for this run")
    teacher = spec.teacher.model_copy(update={"weights": pinned})
    return spec.model_copy(update={"teacher": teacher})


def diverged_message(err: BaseException, folder: Path, spec: ExperimentSpec) -> str | None:
    """One message for a run that diverged (found in a Ray error's text), or None: where,
    which terms, the last good checkpoint, and what to try."""
    text = str(err)
    start = text.find(DIVERGED)
    if start < 0:
        return None
    what = text[start:].split(")", 1)[0] + ")"
    saved = sorted(folder.glob("checkpoint_*"))
    last = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was written"
    return (
        f"{what}; {last}. Try a lower optim.lr (now {spec.optim.lr:g}), a longer "
        f"optim.warmup_iters (now {spec.optim.warmup_iters}), gradient clipping "
        f"(optim.clip_grad_norm, now {spec.optim.clip_grad_norm:g}), then run again with "
        "--restart or a new --run-name"
    )


@dataclass
class ParentRun:
    """Where a run of `compare` goes: a child of `run_id` in `experiment`, named `role`."""

    experiment: str
    run_id: str
    role: str


def role_of(spec: ExperimentSpec) -> str:
    """What a run is to its user: `distilled` (it learns from a teacher) or `trained`."""
    return "trained" if spec.distill.method == "none" else "distilled"


def run_experiment(
    spec: ExperimentSpec,
    run_name: str = "default",
    address: str | None = None,
    restart: bool = False,
    storage_path: str | Path = "runs",
    parent: ParentRun | None = None,
) -> RunResult:
    """Run `spec` (already resolved to absolute paths) end to end and return the summary;
    with `parent`, as a child run of a comparison."""
    problem = name_problem(run_name, "run name")
    if problem:
        raise UserInputError(problem)
    start_timeout()  # a bad $DETRDISTILL_RAY_START_TIMEOUT is refused before anything starts
    started = time.monotonic()
    storage = Path(storage_path).resolve()
    check_writable(storage, "--storage")
    uri = spec.mlflow.tracking_uri
    artifacts = tracking.artifact_root(uri)
    if artifacts is not None:
        check_writable(Path(artifacts.removeprefix("file://")), "MLflow artifacts")
    datasets = checked_datasets(spec)
    run_key = f"{spec.name}-{run_name}"
    experiment = parent.experiment if parent else spec.mlflow.experiment
    experiment_id = tracking.ensure_experiment(uri, experiment, _description(spec))
    # an MLflow run is continued only when Ray has checkpoints to resume it from (in-process
    # runs, num_workers 0, keep none): otherwise its metrics would be logged twice
    resumable = spec.scaling.num_workers > 0 and any((storage / run_key).glob("checkpoint_*"))
    changes = resume_changes(storage / run_key, spec, run_key) if resumable and not restart else []
    if restart or not resumable:
        shutil.rmtree(storage / run_key, ignore_errors=True)
        tracking.delete_runs_with_key(uri, experiment_id, run_key)
        save_started_spec(storage / run_key, spec)
    role = parent.role if parent else role_of(spec)
    tags = {
        "role": role,
        "architecture": spec.student.architecture,
        "method": spec.distill.method,
        "git_commit": tracking.git_commit(Path(__file__).parent),
    }
    display = (
        parent.role if parent else spec.name + ("" if run_name == "default" else f"-{run_name}")
    )
    run_id, resumed = tracking.find_or_create_run(
        uri, experiment_id, run_key, display, tags, parent.run_id if parent else None
    )
    # a resumed run keeps the teacher it started with, whatever the name points at now
    spec = pin_teacher(spec, tracking.run_tag(uri, run_id, "teacher") if resumed else None)
    run_logger = tracking.RunLogger(uri, run_id)
    ACTIVE_RUNS.append(run_logger)
    if not resumed:
        teacher = spec.teacher.source if spec.teacher else "none"
        note = (
            f"{role}: {spec.student.architecture} from spec `{spec.name}`, method "
            f"`{spec.distill.method}`"
            + (f", teacher {teacher}" if spec.teacher else "")
            + f", {spec.train.epochs} epochs, seed {spec.seed}"
        )
        run_logger.tags({"teacher": teacher, "mlflow.note.content": note})
        run_logger.text(spec_to_yaml(spec), "spec.yaml")
        run_logger.params(run_params(spec, len(datasets["train"].class_names)))
        for entry in dataset_inputs(spec.data, datasets):
            run_logger.dataset(**entry)
    logger.info(
        f"{'resuming' if resumed else 'starting'} run {run_key} (MLflow run {run_id}, "
        f"experiment {experiment}, {uri})"
    )
    if changes:
        logger.info("changed since the run started: " + "; ".join(changes))
        run_logger.text("\n".join(changes) + "\n", f"resume_changes_{int(time.time())}.txt")
    try:
        if spec.scaling.num_workers > 0:
            init_ray(address)
        trainer = build_trainer(
            spec,
            run_key,
            storage,
            {
                "mlflow_run_id": run_id,
                "tracking_uri": uri,
                "fault_after_epoch": os.environ.get(FAULT_ENV),
            },
        )
        result = trainer.fit()
    except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, SIGTERM, Ray's SIGINT exit
        LIVE.close()
        raise stopped(err) from None
    except Exception as err:
        LIVE.close()
        run_logger.finish("FAILED")
        ACTIVE_RUNS.remove(run_logger)
        shutdown_local_ray()  # no Ray actors outlive a failed run
        diverged = diverged_message(err, storage / run_key, spec)
        if diverged:
            raise RunFailed(diverged) from None
        raise
    LIVE.close()
    try:
        version, model_file = _export(spec, result, resumed, run_logger, storage / run_key)
    except (KeyboardInterrupt, SystemExit) as err:
        raise stopped(err) from None
    except Exception:  # e.g. an artifact store that refuses the model: the run is FAILED
        run_logger.finish("FAILED")
        ACTIVE_RUNS.remove(run_logger)
        raise
    run_logger.finish()
    ACTIVE_RUNS.remove(run_logger)
    metrics = dict(result.metrics or {})
    summary = RunResult(run_key, run_id, uri, metrics, _best_ap(model_file), version, model_file)
    _print_summary(summary, spec, time.monotonic() - started, experiment_id)
    return summary


def _description(spec: ExperimentSpec) -> str:
    teacher = f", teacher {spec.teacher.source}" if spec.teacher is not None else ""
    return (
        f"detrdistill runs of the spec `{spec.name}`: a {spec.student.architecture} trained "
        f"with method `{spec.distill.method}`{teacher}. Charts: train/ (losses), distill/ "
        "(distillation terms), val/ (COCO AP), stability/ (matching instability), system/."
    )


def _export(
    spec: ExperimentSpec, result: Any, resumed: bool, run_logger: Any, folder: Path
) -> tuple[str | None, Path | None]:
    """Export and register the best checkpoint of a completed run (never one that trained
    nothing, never a finished run's model a second time)."""
    uri, run_id = run_logger.uri, run_logger.run_id
    best = best_checkpoint(result, spec.checkpoint.score_metric, spec.checkpoint.score_mode)
    completed = (result.metrics or {}).get("epoch") == spec.train.epochs
    if resumed and tracking.has_model(uri, run_id):  # a finished run, run again: keep its model
        logger.info(f"run {folder.name} has finished before; its exported model stays as it is")
        return None, None
    if best is None:
        return None, None
    if not completed:
        logger.warning(f"run {folder.name} did not complete its epochs: not exported")
        return None, None
    return export_checkpoint(spec, best, run_logger, uri, run_id, folder / "export")


def _best_ap(model_file: Path | None) -> float | None:
    if model_file is None:
        return None
    return checkpoints.read_model_file(model_file)["extra"].get("val_AP")


def _print_summary(
    result: RunResult, spec: ExperimentSpec, seconds: float, experiment_id: str
) -> None:
    ap = result.metrics.get("val/AP")
    ap50 = result.metrics.get("val/AP50")
    uri = result.tracking_uri
    # the query picks MLflow's "Model training" view (its UI opens on the GenAI one)
    page = (
        f"#/experiments/{experiment_id}/runs/{result.mlflow_run_id}?workflowType=machine_learning"
    )
    if uri.startswith(("http://", "https://")):
        browse = f"  browse: {uri.rstrip('/')}/{page}"
    else:
        browse = f"  browse: mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"
    registered = (
        f"  model: models:/{spec.mlflow.register_as}/{result.registered_version}"
        if result.registered_version
        else "  not registered (set mlflow.register_as)"
    )
    lines = [
        f"run {result.run_key} finished in {duration(seconds)} ({spec.train.epochs} epochs)",
        f"  final val AP {ap:.3f}  AP50 {ap50:.3f}" if ap is not None else "  no evaluation",
        f"  best val AP {result.best_ap:.3f} (the exported model)"
        if result.best_ap is not None
        else "",
        registered,
        f"  model file: {result.model_file}" if result.model_file else "",
        f"  MLflow run {result.mlflow_run_id} in {uri}",
        browse,
    ]
    logger.info("\n".join(line for line in lines if line))
