"""One trial of a sweep, as Ray Tune runs it: Train-in-Tune (a TorchTrainer per trial, for
fifo/asha) or the fit loop itself with Tune checkpoints (PBT); each trial is a child MLflow
run of the sweep and exports its student. `context` is the sweep's shared, JSON-able state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator import tracking
from orchestrator.console import configure_console
from orchestrator.launch.export import best_checkpoint, export_checkpoint
from orchestrator.launch.worker import RayTrainReporter, build_trainer
from orchestrator.spec.loader import load_spec_dict
from orchestrator.spec.params import run_params, spec_to_yaml
from orchestrator.spec.search_space import apply
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.training import checkpoints
from orchestrator.training.fit import run_training

TRIAL_TAG = "detrdistill.trial"


def trial_spec(base: dict, params: dict[str, Any], trial_name: str) -> ExperimentSpec:
    """The spec of one trial: the base spec with the sampled values, validated again."""
    data = apply(base, {k: v for k, v in params.items() if "." in k})
    return load_spec_dict(data, source=f"trial {trial_name}")


def _child_run(
    context: dict, trial_id: str, trial_name: str, params: dict, spec: ExperimentSpec
) -> str:
    uri = context["uri"]
    tags = {
        "mlflow.parentRunId": context["parent_run_id"],
        TRIAL_TAG: trial_id,
        "architecture": spec.student.architecture,
        "method": spec.distill.method,
    }
    key = f"{context['sweep_key']}/{trial_id}"
    run_id, resumed = tracking.find_or_create_run(
        uri, context["experiment_id"], key, trial_name, tags
    )
    if not resumed:
        logger = tracking.RunLogger(uri, run_id)
        logger.text(spec_to_yaml(spec), "spec.yaml")
        logger.params(run_params(spec))
        logger.params({f"trial.{k}": json.dumps(v) for k, v in params.items()})
    return run_id


def _start_trial(config: dict, context: dict) -> tuple[str, ExperimentSpec, str]:
    """(trial id, the trial's spec, its child MLflow run id), with the console set up (a Tune
    trial is a fresh process)."""
    import ray.tune

    configure_console(context["verbose"], relayed=True)
    tune_context = ray.tune.get_context()
    trial_id, trial_name = tune_context.get_trial_id(), tune_context.get_trial_name()
    spec = trial_spec(context["base"], config, trial_name)
    return trial_id, spec, _child_run(context, trial_id, trial_name, config, spec)


def train_in_tune_trial(config: dict, context: dict) -> None:
    """A Tune function trial that fits a TorchTrainer and reports its metrics to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id, spec, run_id = _start_trial(config, context)
    storage = Path(context["storage"])
    trainer = build_trainer(
        spec,
        f"{context['sweep_key']}-{trial_id}",
        storage,
        {"mlflow_run_id": run_id, "tracking_uri": context["uri"]},
        callbacks=[TuneReportCallback()],
    )
    result = trainer.fit()
    logger = tracking.RunLogger(context["uri"], run_id)
    best = best_checkpoint(result, spec.checkpoint.score_metric, spec.checkpoint.score_mode)
    if best is not None:
        export_checkpoint(
            spec, best, logger, context["uri"], run_id, _export_folder(context, trial_id)
        )
    logger.finish()


def pbt_trial(config: dict, context: dict) -> None:
    """A Tune function trial running the training loop itself, with Tune checkpoints (PBT)."""
    import ray.tune

    trial_id, spec, run_id = _start_trial(config, context)
    scratch = Path(context["storage"]) / context["sweep_key"] / "scratch" / trial_id
    reporter = RayTrainReporter(scratch, api=ray.tune, owner=trial_id)

    def logger_factory() -> Any:
        return tracking.RunLogger(context["uri"], run_id)

    run_training(spec, reporter, logger_factory)
    logger = logger_factory()
    if reporter.last_checkpoint_dir is not None:
        checkpoint = ray.tune.Checkpoint.from_directory(str(reporter.last_checkpoint_dir))
        export_checkpoint(
            spec, checkpoint, logger, context["uri"], run_id, _export_folder(context, trial_id)
        )
    logger.finish()


def export_stopped_trial(context: dict, row: dict, run_id: str) -> None:
    """Export a trial that the scheduler stopped before it could export itself, from the best
    of its Ray Train checkpoints."""
    import ray.train

    spec = trial_spec(context["base"], row["params"], row["trial"])
    folder = Path(context["storage"]) / f"{context['sweep_key']}-{row['trial_id']}"
    scored = []
    for path in folder.glob("checkpoint_*"):
        if (path / checkpoints.STATE_FILE).is_file():
            value = (
                checkpoints.load_training_state(path)
                .get("last_eval", {})
                .get(spec.checkpoint.score_metric)
            )
            if value is not None:
                scored.append((value, path))
    if not scored:
        return
    pick = max if spec.checkpoint.score_mode == "max" else min
    _, path = pick(scored, key=lambda item: item[0])
    logger = tracking.RunLogger(context["uri"], run_id)
    checkpoint = ray.train.Checkpoint.from_directory(str(path))
    folder = _export_folder(context, row["trial_id"])
    export_checkpoint(spec, checkpoint, logger, context["uri"], run_id, folder)


def _export_folder(context: dict, trial_id: str) -> Path:
    """Where a trial's exported model file stays: in the sweep's own folder under --storage."""
    return Path(context["storage"]) / context["sweep_key"] / "export" / trial_id
