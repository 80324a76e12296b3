"""MLflow: the only module that imports mlflow.

The driver creates the experiment and the run (SQLite dislikes concurrent creation); rank 0 of
the workers logs into that run by id. A run is found again by its `detrdistill.run_key` tag, so
re-running the same command continues the same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from orchestrator.console import is_verbose, quiet_libraries

quiet_libraries(is_verbose())  # importing mlflow set its loggers' levels: INFO off the console
logger = logging.getLogger("detrdistill")
RUN_KEY_TAG = "detrdistill.run_key"
MODEL_URI_TAG = "detrdistill.model_uri"  # where log_model put the run's exported student


@contextlib.contextmanager
def fluent(uri: str) -> Iterator[None]:
    """MLflow's fluent API (register_model, start_run) on `uri` for the block only: setting it
    for good would also set $MLFLOW_TRACKING_URI, and later runs of this process would track
    where this one did."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets it again


def mlflow_client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store go to `mlartifacts/` beside the database; other stores
    (a server) decide for themselves (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # not a GenAI one


def ensure_experiment(uri: str, name: str, description: str | None = None) -> str:
    """The id of experiment `name`, created if missing (artifacts at `artifact_root(uri)`),
    marked as a model-training experiment (MLflow's UI opens it on its runs) and described
    (`description`, when given and the experiment has none yet)."""
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        experiment_id = client.create_experiment(name, artifact_location=artifact_root(uri))
        tags: dict[str, str] = {}
    else:
        experiment_id, tags = found.experiment_id, found.tags
    for key, value in EXPERIMENT_KIND.items():
        if tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)
    if description and not tags.get("mlflow.note.content"):
        client.set_experiment_tag(experiment_id, "mlflow.note.content", description)
    return experiment_id


def metric_history(uri: str, run_id: str, key: str) -> list[float]:
    """Every logged value of metric `key` of a run, in step order, one per step (the exported
    model's metrics repeat their epoch's point, linked to the model)."""
    history = mlflow_client(uri).get_metric_history(run_id, key)
    return [value for _, value in sorted({m.step: m.value for m in history}.items())]


def find_or_create_run(
    uri: str,
    experiment_id: str,
    run_key: str,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> tuple[str, bool]:
    """(run id, resumed): the run tagged with `run_key` if one exists, else a new one (a
    child of `parent_run_id` when given)."""
    client = mlflow_client(uri)
    if parent_run_id:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1
    )
    if runs:
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id, True
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_KEY_TAG: run_key, **tags})
    return run.info.run_id, False


def delete_runs_with_key(uri: str, experiment_id: str, run_key: str, children: bool = False) -> int:
    """Delete earlier runs of this key (`--restart`), and with `children` the runs keyed
    `<run_key>/...` (a sweep's trials); returns how many."""
    client = mlflow_client(uri)
    query = f"tags.`{RUN_KEY_TAG}` = '{run_key}'"
    runs = client.search_runs([experiment_id], filter_string=query)
    if children:
        query = f"tags.`{RUN_KEY_TAG}` LIKE '{run_key}/%'"
        runs += client.search_runs([experiment_id], filter_string=query)
    for run in runs:
        client.delete_run(run.info.run_id)
    return len(runs)


def delete_run_tree(uri: str, experiment_id: str, run_key: str) -> None:
    """Delete the runs keyed `run_key` and every child run of theirs."""
    client = mlflow_client(uri)
    query = f"tags.`{RUN_KEY_TAG}` = '{run_key}'"
    for run in client.search_runs([experiment_id], filter_string=query):
        children = f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
        for child in client.search_runs([experiment_id], filter_string=children):
            client.delete_run(child.info.run_id)
        client.delete_run(run.info.run_id)


def child_runs(uri: str, experiment_id: str, parent_run_id: str, key_tag: str) -> dict[str, str]:
    """{value of `key_tag`: run id} of the child runs of a parent run."""
    runs = mlflow_client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    return {r.data.tags[key_tag]: r.info.run_id for r in runs if key_tag in r.data.tags}


def close_unfinished(uri: str, run_ids: Any) -> None:
    """Mark runs still RUNNING (trials a scheduler stopped) as KILLED."""
    client = mlflow_client(uri)
    for run_id in run_ids:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")


def run_tag(uri: str, run_id: str, key: str) -> str | None:
    """The value of tag `key` of a run, or None."""
    return mlflow_client(uri).get_run(run_id).data.tags.get(key)


def has_model(uri: str, run_id: str) -> bool:
    """Whether the run logged an exported student (`log_model` tags the run with its URI)."""
    return MODEL_URI_TAG in mlflow_client(uri).get_run(run_id).data.tags


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class RunLogger:
    """Logs metrics and artifacts into one existing MLflow run by id."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id = run_id
        self.client = mlflow_client(uri)
        # epochs this run logged before (an attempt that died after logging, before its
        # checkpoint was kept): redone epochs are not logged a second time
        history = self.client.get_metric_history(run_id, "train/loss")
        self.logged_until = max((m.step for m in history), default=0)

    def tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def params(self, params: dict[str, str]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = [mlflow.entities.Param(k, str(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start : start + 100])

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log at `step` (an epoch; 0 for once-per-run values) unless that epoch is logged."""
        if 0 < step <= self.logged_until:
            logger.debug(f"epoch {step} is logged already; not logging it again")
            return
        entries = [
            mlflow.entities.Metric(metric_name(k), float(v), int(1000 * time.time()), step)
            for k, v in metrics.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and np.isfinite(v)
        ]
        if entries:
            self.client.log_batch(self.run_id, metrics=entries)

    def text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def image(self, image: np.ndarray, artifact_file: str) -> None:
        """uint8 [H,W,3] image as a PNG artifact."""
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def step_image(self, image: np.ndarray, key: str, step: int) -> None:
        """uint8 [H,W,3] image under `key` at `step`: MLflow's UI shows a slider over steps."""
        self.client.log_image(self.run_id, image, key=key, step=step)

    def table(self, data: dict[str, list], artifact_file: str) -> None:
        """A column-oriented table (`mlflow.log_table`), shown as a table in the UI."""
        self.client.log_table(self.run_id, data, artifact_file)

    def dataset(self, name: str, digest: str, source: str, profile: dict, context: str) -> None:
        """The run's input data in MLflow's Datasets (name, digest, source, a profile of
        sizes and classes), used in `context` (train, validation)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        entity = Dataset(
            name=name,
            digest=digest,
            source_type="local" if "://" not in source else source.split("://")[0],
            source=json.dumps({"uri": source}),
            profile=json.dumps(profile),
        )
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags=[tag])])

    def figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def system_metrics(self, resumed: bool) -> Any:
        """MLflow's CPU / memory / disk / network (and GPU, with nvidia-ml-py) sampler on
        this run, every 10 s (`system/*`); None where it cannot start (no psutil). Stop it
        with `.finish()`."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=resumed, tracking_uri=self.uri
            )
            monitor.start()
            return _SystemMetrics(monitor)
        except Exception as err:  # psutil missing, a store that refuses: train regardless
            logger.debug(f"no system metrics for this run: {err}")
            return None

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class _SystemMetrics:
    """MLflow's system-metrics sampler whose `finish` also logs the samples of the last,
    unfinished interval (MLflow's own drops them, so a short run would show none)."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def finish(self) -> None:
        monitor = self.monitor
        monitor.finish()
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as err:  # the run may be closed already: never fail training
            logger.debug(f"last system-metrics sample not logged: {err}")


# reported to Ray (its schedulers and checkpoint bookkeeping read it) but not an MLflow chart:
# every metric already has the epoch as its step
NOT_METRICS = frozenset({"epoch"})


def metric_name(key: str) -> str:
    # MLflow allows letters, digits and _ - . / and spaces
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)
