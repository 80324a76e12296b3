"""`detrdistill run`: check everything, set up MLflow, fit a Ray Train TorchTrainer, export.

The Ray run name is `<spec name>-<run name>`, deterministic, so running the same command after a
crash resumes from the last checkpoint in the same MLflow run; `--restart` starts over.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.training import checkpoints
from orchestrator.data.build import build_datasets
from orchestrator.errors import UserInputError
from orchestrator.launch.export import ExportedDetector
from orchestrator.training.model_source import check_source_syntax, load_model
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.spec.loader import flatten_params, spec_to_yaml

# MLflow runs this process has open, so that a stop signal can close them (see the CLI)
ACTIVE_RUNS: list = []


_handle_stop = False


def handle_stop_signals() -> None:
    """Treat SIGTERM (how `detrdistill jobs stop` ends a job) like Ctrl-C, closing this
    process's MLflow runs as KILLED at once, so they do not stay RUNNING forever. `ray.init`
    installs its own SIGTERM handler, so `_init_ray` installs this one again after it."""
    global _handle_stop
    _handle_stop = True
    signal.signal(signal.SIGTERM, _on_stop_signal)


def _on_stop_signal(signum, frame) -> None:
    close_active_runs("KILLED")  # at once: the process may be killed before it unwinds
    raise KeyboardInterrupt(f"signal {signum}")


def close_active_runs(status: str) -> None:
    while ACTIVE_RUNS:
        try:
            ACTIVE_RUNS.pop().finish(status)
        except Exception as err:  # closing is best effort while being stopped
            print(f"could not close an MLflow run: {err}", flush=True)


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
    train_set, val_set = build_datasets(spec.data)
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
    if spec.teacher is not None:
        if spec.teacher.model.num_classes not in (None, k):
            raise UserInputError(
                f"teacher.model.num_classes: {spec.teacher.model.num_classes} but the dataset has "
                f"{k} classes"
            )
        problem = check_source_syntax(spec.teacher.weights)
        if problem:
            raise UserInputError(f"teacher.weights: {problem}")
        load_model(
            spec.teacher.weights, spec.teacher.model.to_model_config(k), spec.mlflow.tracking_uri
        )
    return k


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray Job
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=True, log_to_driver=True)
    if _handle_stop:
        signal.signal(signal.SIGTERM, _on_stop_signal)


def run_experiment(
    spec: ExperimentSpec,
    run_name: str = "default",
    address: str | None = None,
    restart: bool = False,
    storage_path: str | Path = "runs",
) -> RunResult:
    """Run `spec` (already resolved to absolute paths) end to end and return the summary."""
    from orchestrator import tracking
    from orchestrator.training.fit import FAULT_ENV

    started = time.monotonic()
    num_classes = preflight(spec)
    run_key = f"{spec.name}-{run_name}"
    storage = Path(storage_path).resolve()
    uri = spec.mlflow.tracking_uri
    experiment_id = tracking.ensure_experiment(uri, spec.mlflow.experiment, _artifact_root(uri))
    # an MLflow run is continued only when Ray has checkpoints to resume it from (in-process
    # runs, num_workers 0, keep none): otherwise its metrics would be logged twice
    resumable = spec.scaling.num_workers > 0 and any((storage / run_key).glob("checkpoint_*"))
    if restart or not resumable:
        shutil.rmtree(storage / run_key, ignore_errors=True)
        tracking.delete_runs_with_key(uri, experiment_id, run_key)
    tags = {
        "architecture": spec.student.architecture,
        "method": spec.distill.method,
        "teacher": spec.teacher.weights if spec.teacher else "none",
        "git_commit": tracking.git_commit(Path(__file__).parent),
    }
    run_id, resumed = tracking.find_or_create_run(uri, experiment_id, run_key, run_key, tags)
    run_logger = tracking.RunLogger(uri, run_id)
    ACTIVE_RUNS.append(run_logger)
    if not resumed:
        run_logger.text(spec_to_yaml(spec), "spec.yaml")
        run_logger.params(flatten_params(spec))
    print(
        f"{'resuming' if resumed else 'starting'} run {run_key} (MLflow run {run_id}, "
        f"experiment {spec.mlflow.experiment}, {uri})",
        flush=True,
    )
    if spec.scaling.num_workers > 0:
        _init_ray(address)
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
    try:
        result = trainer.fit()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from `detrdistill jobs stop` (see the CLI)
        close_active_runs("KILLED")
        raise
    except Exception:
        run_logger.finish("FAILED")
        raise
    best = _best_checkpoint(result, spec.checkpoint.score_metric, spec.checkpoint.score_mode)
    version, model_file = None, None
    if best is not None:
        version, model_file = _export(spec, best, run_logger, uri, run_id, num_classes)
    run_logger.finish()
    ACTIVE_RUNS.remove(run_logger)
    metrics = dict(result.metrics or {})
    summary = RunResult(run_key, run_id, uri, metrics, _best_ap(model_file), version, model_file)
    _print_summary(summary, spec, time.monotonic() - started)
    return summary


def build_trainer(
    spec: ExperimentSpec,
    run_key: str,
    storage: Path,
    extra: dict,
    callbacks=None,
    worker: Callable[[dict], None] | None = None,
):
    """The Ray Train TorchTrainer of a spec; its run name `run_key` makes it resumable.
    `worker` replaces the training function (`train_worker`), e.g. to time it."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.training.fit import train_worker

    scaling = spec.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return TorchTrainer(
        worker or train_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "scratch_dir": str(storage / run_key / "scratch"),
            **extra,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_key,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.checkpoint.num_to_keep,
                checkpoint_score_attribute=spec.checkpoint.score_metric,
                checkpoint_score_order=spec.checkpoint.score_mode,
            ),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            callbacks=callbacks,
        ),
    )


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store go to `mlartifacts/` beside the database."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def _best_checkpoint(result, metric: str, mode: str):
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if scored:
        pick = max if mode == "max" else min
        return pick(scored, key=lambda cm: cm[1][metric])[0]
    return result.checkpoint


def _best_ap(model_file: Path | None) -> float | None:
    if model_file is None:
        return None
    return checkpoints.read_model_file(model_file)["extra"].get("val_AP")


def _export(spec, checkpoint, run_logger, uri: str, run_id: str, num_classes: int):
    """Log curves, the plain model file, the MLflow model, and register it."""
    from orchestrator import tracking

    export_dir = Path(tempfile.mkdtemp(prefix="detrdistill-export-"))
    with checkpoint.as_directory() as path:
        state = checkpoints.load_training_state(path)
        choice = export_choice(
            spec.checkpoint.export,
            state.get("last_eval", {}),
            (Path(path) / checkpoints.EMA_MODEL_FILE).is_file(),
        )
        source = checkpoints.EMA_MODEL_FILE if choice == "ema" else checkpoints.MODEL_FILE
        shutil.copy(Path(path) / source, export_dir / checkpoints.MODEL_FILE)
    model_file = export_dir / checkpoints.MODEL_FILE
    model, payload = load_model(str(model_file))
    ap_key = "val_ema/AP" if choice == "ema" else "val/AP"
    extra = dict(payload["extra"], val_AP=state.get("last_eval", {}).get(ap_key), exported=choice)
    checkpoints.save_model_file(model_file, model, spec.student.to_model_config(num_classes), extra)
    run_logger.params({"exported_model": choice})
    print(f"exporting the {choice} model of the chosen checkpoint", flush=True)
    figure = tracking.curves_figure(
        {
            k: v
            for k, v in state["history"].items()
            if k in ("train/loss", "val/AP", "val/AP50", "val_ema/AP", "val_ema/AP50")
            or k.endswith("/instability")
        }
    )
    if figure is not None:
        run_logger.figure(figure, "curves.png")
    run_logger.artifact(model_file, "model")
    exported = ExportedDetector(model.eval(), extra).eval()
    size = spec.data.eval_size
    example = np.zeros((1, 3, size, size), dtype=np.float32)
    description = f"{spec.student.architecture} trained by detrdistill run {spec.name} (epoch {extra.get('epoch')})"
    version = tracking.log_model(
        uri, run_id, exported, example, model_file, spec.mlflow.register_as, description
    )
    return version, model_file


def export_choice(export: str, last_eval: dict[str, float], has_ema: bool) -> str:
    """'student' or 'ema': what `checkpoint.export` picks from a checkpoint ('best' takes the
    EMA model only when its val AP beats the student's)."""
    if export == "ema" and not has_ema:
        raise ValueError("checkpoint.export is 'ema' but the checkpoint holds no EMA model")
    if export != "best" or not has_ema:
        return "ema" if export == "ema" else "student"
    student, ema = last_eval.get("val/AP"), last_eval.get("val_ema/AP")
    if ema is not None and (student is None or ema > student):
        return "ema"
    return "student"


def _print_summary(result: RunResult, spec: ExperimentSpec, seconds: float) -> None:
    ap = result.metrics.get("val/AP")
    ap50 = result.metrics.get("val/AP50")
    lines = [
        f"run {result.run_key} finished in {seconds:.0f}s",
        f"  final val AP {ap:.3f}  AP50 {ap50:.3f}" if ap is not None else "  no evaluation",
        f"  best val AP {result.best_ap:.3f}" if result.best_ap is not None else "",
        f"  MLflow run {result.mlflow_run_id} in {result.tracking_uri}",
        f"  registered as models:/{spec.mlflow.register_as}/{result.registered_version}"
        if result.registered_version
        else "  not registered (set mlflow.register_as)",
        f"  browse: {result.tracking_uri}"
        if result.tracking_uri.startswith(("http://", "https://"))
        else f"  browse: mlflow ui --backend-store-uri {result.tracking_uri}",
    ]
    print("\n".join(line for line in lines if line), flush=True)
