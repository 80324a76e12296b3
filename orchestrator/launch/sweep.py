"""`detrdistill sweep`: a Ray Tune sweep of an experiment over its `tune:` section.

- fifo / asha with random, grid or optuna search: Train-in-Tune. Each trial is a Tune function
  that fits a Ray Train `TorchTrainer` (with `TuneReportCallback`), so a trial can itself use
  several DDP workers.
- pbt: the training loop runs directly in the Tune trial and reports Tune checkpoints, the only
  way PBT can copy (exploit) one trial's checkpoint into another.

MLflow: one parent run for the sweep (spec, search space, results table, metric-vs-parameter
plot) and one child run per trial with everything a normal run has; the best trial's student
is registered under `mlflow.register_as`. The sweep's Tune run name is `<spec name>-sweep-<run
name>`, so the same command after an interruption continues the sweep.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import registry, tracking
from orchestrator.console import is_verbose
from orchestrator.errors import UserInputError
from orchestrator.evaluation.curves import metric_vs_params_figure
from orchestrator.launch.local_ray import start_timeout
from orchestrator.launch.run import check_writable, preflight
from orchestrator.launch.session import ACTIVE_RUNS, init_ray, shutdown_local_ray, stopped
from orchestrator.launch.sweep_results import format_results, results_rows
from orchestrator.launch.trials import (
    TRIAL_TAG,
    export_stopped_trial,
    pbt_trial,
    train_in_tune_trial,
)
from orchestrator.launch.tune_objects import param_space, tune_scheduler, tune_searcher
from orchestrator.spec.params import flatten_params, spec_to_yaml
from orchestrator.spec.paths import name_problem
from orchestrator.spec.sections import ExperimentSpec

logger = logging.getLogger("detrdistill")


@dataclass
class SweepResult:
    sweep_key: str
    parent_run_id: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    registered_version: str | None
    table: str


TRIAL_CPU = 0.01  # what a Train-in-Tune trial itself reserves (Tune rejects 0)


def _concurrency(spec: ExperimentSpec, pbt: bool) -> int:
    """`tune.max_concurrent_trials`, capped by what the cluster can hold at once: Tune does not
    count a trial's Train workers, so too many concurrent trials wait for workers that never
    start (Ray Train gives up after 60 s)."""
    import ray

    total = ray.cluster_resources()
    scaling = spec.scaling
    cpus = scaling.num_workers * scaling.cpus_per_worker + (0 if pbt else TRIAL_CPU)
    fits = int(total.get("CPU", 0) // cpus) if cpus else spec.tune.max_concurrent_trials
    if scaling.use_gpu and scaling.gpus_per_worker:
        fits = min(
            fits, int(total.get("GPU", 0) // (scaling.num_workers * scaling.gpus_per_worker))
        )
    wanted = spec.tune.max_concurrent_trials
    if fits < 1:
        raise UserInputError(
            f"tune.resources: a trial needs {cpus:g} CPUs but the Ray cluster has "
            f"{total.get('CPU', 0):g}; lower num_workers or cpus_per_worker"
        )
    if fits < wanted:
        logger.info(
            f"running {fits} trial(s) at a time, not {wanted}: each needs {cpus:g} CPUs "
            f"and the cluster has {total.get('CPU', 0):g} (lower tune.resources.cpus_per_worker "
            "to fit more)"
        )
    return min(fits, wanted)


def _with_trial_resources(spec: ExperimentSpec) -> ExperimentSpec:
    r = spec.tune.resources
    scaling = spec.scaling.model_copy(
        update={
            k: v
            for k, v in (
                ("num_workers", r.num_workers),
                ("cpus_per_worker", r.cpus_per_worker),
                ("gpus_per_worker", r.gpus_per_worker),
            )
            if v is not None
        }
    )
    if r.gpus_per_worker:
        scaling = scaling.model_copy(update={"use_gpu": True})
    if scaling.num_workers == 0:
        scaling = scaling.model_copy(update={"num_workers": 1})  # a trial needs a real worker
    return spec.model_copy(update={"scaling": scaling})


def run_sweep(
    spec: ExperimentSpec,
    run_name: str = "default",
    address: str | None = None,
    restart: bool = False,
    storage_path: str | Path = "runs",
) -> SweepResult:
    """Run the sweep of `spec.tune` (paths already resolved) and return its results."""
    from ray import tune

    if spec.tune is None:
        raise UserInputError(f"{spec.name}: no 'tune' section; add one to sweep this experiment")
    problem = name_problem(run_name, "run name")
    if problem:
        raise UserInputError(problem)
    start_timeout()  # a bad $DETRDISTILL_RAY_START_TIMEOUT is refused before anything starts
    started = time.monotonic()
    spec = _with_trial_resources(spec)
    preflight(spec)
    pbt = spec.tune.scheduler.kind == "pbt"
    sweep_key = f"{spec.name}-sweep-{run_name}"
    storage = Path(storage_path).resolve()
    check_writable(storage, "--storage")
    uri = spec.mlflow.tracking_uri
    experiment_id = tracking.ensure_experiment(uri, spec.mlflow.experiment)
    restorable = tune.Tuner.can_restore(str(storage / sweep_key))
    if restart or not restorable:
        shutil.rmtree(storage / sweep_key, ignore_errors=True)
        for old in storage.glob(f"{sweep_key}-*"):
            shutil.rmtree(old, ignore_errors=True)
        tracking.delete_runs_with_key(uri, experiment_id, sweep_key, children=True)
    parent_id, resumed = tracking.find_or_create_run(
        uri, experiment_id, sweep_key, sweep_key, {"detrdistill.sweep": "parent"}
    )
    parent = tracking.RunLogger(uri, parent_id)
    ACTIVE_RUNS.append(parent)
    if not resumed:
        parent.text(spec_to_yaml(spec), "sweep_spec.yaml")
        parent.text(json.dumps(spec.tune.model_dump(mode="json"), indent=2), "search_space.json")
        parent.params({k: v for k, v in flatten_params(spec).items() if k.startswith("tune.")})
    logger.info(
        f"{'resuming' if resumed else 'starting'} sweep {sweep_key} ({spec.tune.scheduler.kind}, "
        f"{spec.tune.searcher} search; MLflow parent run {parent_id} in {uri})"
    )
    init_ray(address, progress=False)  # trials would fight over one live line
    concurrent = _concurrency(spec, pbt)
    base = spec.model_dump(mode="json", exclude={"tune"})
    base["mlflow"]["register_as"] = None  # only the best trial is registered, by the driver
    context = {
        "base": base,
        "uri": uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_id,
        "sweep_key": sweep_key,
        "storage": str(storage),
        "verbose": is_verbose(),
    }
    function = pbt_trial if pbt else train_in_tune_trial
    if pbt:
        scaling = spec.scaling
        resources = {"CPU": scaling.cpus_per_worker}
        if scaling.use_gpu:
            resources["GPU"] = scaling.gpus_per_worker
    else:
        resources = {"CPU": TRIAL_CPU}  # the trial only drives its TorchTrainer's workers
    trainable = tune.with_resources(tune.with_parameters(function, context=context), resources)
    if restorable and not restart:
        logger.info(f"continuing the interrupted sweep in {storage / sweep_key}")
        tuner = tune.Tuner.restore(
            str(storage / sweep_key), trainable=trainable, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.tune.metric,
                mode=spec.tune.mode,
                num_samples=spec.tune.num_samples,
                max_concurrent_trials=concurrent,
                scheduler=tune_scheduler(spec),
                search_alg=tune_searcher(spec),
            ),
            run_config=tune.RunConfig(name=sweep_key, storage_path=str(storage)),
        )
    try:
        grid = tuner.fit()
    except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, SIGTERM, Ray's SIGINT exit
        raise stopped(err) from None
    except Exception:
        parent.finish("FAILED")
        ACTIVE_RUNS.remove(parent)
        shutdown_local_ray()
        raise
    rows = results_rows(grid, spec.tune.metric, spec.tune.mode, spec.train.epochs)
    children = tracking.child_runs(uri, experiment_id, parent_id, TRIAL_TAG)
    tracking.close_unfinished(uri, children.values())
    table = format_results(rows, spec.tune.metric)
    best = rows[0] if rows and rows[0]["best"] is not None else None
    version = None
    if best is not None and spec.mlflow.register_as and best["trial_id"] in children:
        child = children[best["trial_id"]]
        if not tracking.has_model(uri, child):  # stopped early by the scheduler: export now
            export_stopped_trial(context, best, child)
        version = registry.register_run_model(
            uri,
            child,
            spec.mlflow.register_as,
            f"best trial {best['trial']} of sweep {sweep_key}: {spec.tune.metric} "
            f"{best['best']:.4f} with " + json.dumps(best["params"]),
        )
    parent.text(table, "results.md")
    figure = metric_vs_params_figure(rows, spec.tune.metric)
    if figure is not None:
        parent.figure(figure, "metric_vs_params.png")
    if best is not None:
        parent.metrics({f"best/{spec.tune.metric}": best["best"]}, step=0)
    parent.finish()
    ACTIVE_RUNS.remove(parent)
    minutes = (time.monotonic() - started) / 60
    logger.info(f"\nsweep {sweep_key} finished in {minutes:.1f} min\n{table}")
    if version is not None:
        logger.info(f"best trial registered as models:/{spec.mlflow.register_as}/{version}")
    return SweepResult(sweep_key, parent_id, rows, best, version, table)
