"""MLflow: the only module that imports mlflow.

The driver creates the experiment and the run (SQLite dislikes concurrent creation); rank 0 of
the workers logs into that run by id. A run is found again by its `detrdistill.run_key` tag, so
re-running the same command continues the same MLflow run.
"""

from __future__ import annotations

import contextlib
import io
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
def _fluent(uri: str) -> Iterator[None]:
    """MLflow's fluent API (register_model, start_run) on `uri` for the block only: setting it
    for good would also set $MLFLOW_TRACKING_URI, and later runs of this process would track
    where this one did."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets it again


def _client(uri: str) -> MlflowClient:
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
    client = _client(uri)
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
    history = _client(uri).get_metric_history(run_id, key)
    return [value for _, value in sorted({m.step: m.value for m in history}.items())]


def pin_model_version(uri: str, source: str) -> tuple[str, str | None]:
    """A registered-model source fixed to one version: `models:/name/latest` and
    `models:/name@alias` become `models:/name/N` (with N's run id), so that a later
    registration under the same name cannot swap the teacher of a running or resumed run.
    Other sources come back unchanged (run id None)."""
    if not source.startswith("models:/"):
        return source, None
    rest = source[len("models:/") :]
    client = _client(uri)
    if "@" in rest and "/" not in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, wanted = rest.partition("/")
        if wanted == "latest":
            newest = latest_version(uri, name)
            if newest is None:
                raise ValueError(f"{source}: the registered model {name!r} has no version")
            wanted = newest
        version = client.get_model_version(name, wanted)
    return f"models:/{name}/{version.version}", version.run_id


def latest_version(uri: str, name: str) -> str | None:
    """The newest version of registered model `name`, or None when it has none."""
    versions = _client(uri).search_model_versions(f"name = '{name}'")
    return max((v.version for v in versions), key=int) if versions else None


def version_tags(uri: str, name: str, version: str) -> dict[str, str]:
    """The tags of a registered model version."""
    return dict(_client(uri).get_model_version(name, version).tags)


def version_run(uri: str, name: str, version: str) -> str | None:
    """The run that logged a registered model version (None when unknown)."""
    return _client(uri).get_model_version(name, version).run_id


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
    client = _client(uri)
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
    client = _client(uri)
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
    client = _client(uri)
    query = f"tags.`{RUN_KEY_TAG}` = '{run_key}'"
    for run in client.search_runs([experiment_id], filter_string=query):
        children = f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
        for child in client.search_runs([experiment_id], filter_string=children):
            client.delete_run(child.info.run_id)
        client.delete_run(run.info.run_id)


def child_runs(uri: str, experiment_id: str, parent_run_id: str, key_tag: str) -> dict[str, str]:
    """{value of `key_tag`: run id} of the child runs of a parent run."""
    runs = _client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    return {r.data.tags[key_tag]: r.info.run_id for r in runs if key_tag in r.data.tags}


def close_unfinished(uri: str, run_ids: Any) -> None:
    """Mark runs still RUNNING (trials a scheduler stopped) as KILLED."""
    client = _client(uri)
    for run_id in run_ids:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")


def run_tag(uri: str, run_id: str, key: str) -> str | None:
    """The value of tag `key` of a run, or None."""
    return _client(uri).get_run(run_id).data.tags.get(key)


def has_model(uri: str, run_id: str) -> bool:
    """Whether the run logged an exported student (`log_model` tags the run with its URI)."""
    return MODEL_URI_TAG in _client(uri).get_run(run_id).data.tags


def register_run_model(uri: str, run_id: str, name: str, description: str) -> str | None:
    """Register the student a run logged; None if it logged none."""
    client = _client(uri)
    if not has_model(uri, run_id):
        logger.warning("run %s logged no student model: nothing registered", run_id)
        return None
    model_uri = client.get_run(run_id).data.tags[MODEL_URI_TAG]
    version = _register(uri, model_uri, name)
    client.update_model_version(name, version.version, description)
    return str(version.version)


def _register(uri: str, model_uri: str, name: str) -> Any:
    """`mlflow.register_model`, without its "Successfully registered" prints (the run's
    summary says where the model went)."""
    with _fluent(uri), contextlib.redirect_stderr(io.StringIO()):
        return mlflow.register_model(model_uri, name)


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
        self.client = _client(uri)
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
            mlflow.entities.Metric(_metric_name(k), float(v), int(1000 * time.time()), step)
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
            return monitor
        except Exception as err:  # psutil missing, a store that refuses: train regardless
            logger.debug(f"no system metrics for this run: {err}")
            return None

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


# reported to Ray (its schedulers and checkpoint bookkeeping read it) but not an MLflow chart:
# every metric already has the epoch as its step
NOT_METRICS = frozenset({"epoch"})


def _metric_name(key: str) -> str:
    # MLflow allows letters, digits and _ - . / and spaces
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def log_model(
    uri: str,
    run_id: str,
    model: Any,
    input_example: np.ndarray,
    model_file: Path,
    register_as: str | None,
    description: str = "",
    serialization_format: str = "pt2",
    version_tags: dict[str, str] | None = None,
    model_name: str = "model",
    model_metrics: dict[str, float] | None = None,
    metrics_step: int = 0,
) -> str | None:
    """Log the exported student as an MLflow PyTorch model named `model_name` (`pt2`:
    torch.export's format, no pickled code; or `pickle`), with the plain model file as an
    extra file, `model_metrics` (measured at epoch `metrics_step`: the same points as the
    run's own) on the logged model (MLflow shows them on its page), and
    register it with `description` and `version_tags`; returns the registered version or
    None."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).numpy()
    signature = infer_signature(input_example, output)

    def log(form: str) -> Any:
        with _fluent(uri), mlflow.start_run(run_id=run_id):
            return mlflow.pytorch.log_model(
                model,
                name=model_name,
                signature=signature,
                input_example=input_example,
                serialization_format=form,
                extra_files=[str(model_file)],
                pip_requirements=_requirements(),
            )

    export_log = logging.getLogger("torch._export")  # its notes on specialised dimensions
    level = export_log.level
    export_log.setLevel(logging.ERROR)
    try:
        info = log(serialization_format)
    except Exception as err:  # torch.export can refuse a model: the run must still end well
        if serialization_format == "pickle":
            raise
        logger.warning(
            f"the {serialization_format} MLflow model could not be written "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); logged the pickle "
            "flavour instead (the plain model file beside it is unaffected)"
        )
        info = log("pickle")
    finally:
        export_log.setLevel(level)
    # MLflow 3 stores models as LoggedModels (models:/m-...), not under the run's artifacts
    client = _client(uri)
    client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    if model_metrics and getattr(info, "model_id", None):
        now = int(1000 * time.time())
        linked = [
            mlflow.entities.Metric(
                _metric_name(k), float(v), now, metrics_step, model_id=info.model_id
            )
            for k, v in model_metrics.items()
            if v is not None and np.isfinite(v)
        ]
        client.log_batch(run_id, metrics=linked)
    if not register_as:
        return None
    version = _register(uri, info.model_uri, register_as)
    if description:
        client.update_model_version(register_as, version.version, description)
    for key, value in (version_tags or {}).items():
        client.set_model_version_tag(register_as, version.version, key, value)
    promote_if_best(uri, register_as, str(version.version))
    return str(version.version)


BEST_ALIAS = "best"


def promote_if_best(uri: str, name: str, version: str) -> bool:
    """Point the `@best` alias of `name` at `version` when its `val_AP` tag beats the current
    best's (or there is none yet); True when it moved."""
    client = _client(uri)
    new = client.get_model_version(name, version).tags.get("val_AP")
    if new is None:
        return False
    try:
        current = client.get_model_version_by_alias(name, BEST_ALIAS)
    except Exception:  # no @best yet (MLflow raises for an unknown alias)
        current = None
    if current is not None and str(current.version) != str(version):
        old = current.tags.get("val_AP")
        if old is not None and float(old) >= float(new):
            return False
    client.set_registered_model_alias(name, BEST_ALIAS, version)
    return True


def _requirements() -> list[str]:
    import torch
    import torchvision

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
    ]


def download(uri: str, source: str, folder: Path) -> Path:
    """Download `models:/...` or `runs:/...` into `folder` and return the local path."""
    with _fluent(uri):  # models:/ resolution reads the global registry URI
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder))
    return Path(local)


def metric_vs_params_figure(rows: list[dict[str, Any]], metric: str) -> Any:
    """A scatter of the best metric of every trial against each searched parameter (numbers on
    a log axis when they span more than a decade, other values as categories)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = sorted({k for r in rows for k in r["params"]})
    scored = [r for r in rows if r["best"] is not None]
    if not names or not scored:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = [r["params"].get(name) for r in scored]
        ys = [r["best"] for r in scored]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            ax.scatter(values, ys)
            positive = [v for v in values if v > 0]
            if len(positive) == len(values) and max(values) > 10 * min(values):
                ax.set_xscale("log")
        else:
            labels = [str(v) for v in values]
            ticks = sorted(set(labels))
            ax.scatter([ticks.index(label) for label in labels], ys)
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, fontsize=7)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel(metric)
    fig.tight_layout()
    return fig


def curves_figure(history: dict[str, list[tuple[int, float]]]) -> Any:
    """Loss, AP and (when present) matching-instability curves over epochs as a matplotlib
    figure (None if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: skipping the curves plot")
        return None
    panels = ["training loss", "validation"]
    if any(key.startswith("stability") for key in history):
        panels.append("matching instability (probe set)")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for key, points in history.items():
        if not points:
            continue
        if key.startswith("stability"):
            ax = axes[2]
        elif key.startswith(("val/", "val_ema/")):
            ax = axes[1]
        else:
            ax = axes[0]
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", label=key)
    for ax, title in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
