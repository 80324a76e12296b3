"""The MLflow model registry: logging a trained student as an MLflow model, registering it
with its numbers, the `@best` alias, and resolving `models:/` sources. With tracking.py, the
only modules that import mlflow."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from orchestrator.tracking import MODEL_URI_TAG, fluent, has_model, metric_name, mlflow_client

logger = logging.getLogger("detrdistill")


def pin_model_version(uri: str, source: str) -> tuple[str, str | None]:
    """A registered-model source fixed to one version: `models:/name/latest` and
    `models:/name@alias` become `models:/name/N` (with N's run id), so that a later
    registration under the same name cannot swap the teacher of a running or resumed run.
    Other sources come back unchanged (run id None)."""
    if not source.startswith("models:/"):
        return source, None
    rest = source[len("models:/") :]
    client = mlflow_client(uri)
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
    versions = mlflow_client(uri).search_model_versions(f"name = '{name}'")
    return max((v.version for v in versions), key=int) if versions else None


def version_tags(uri: str, name: str, version: str) -> dict[str, str]:
    """The tags of a registered model version."""
    return dict(mlflow_client(uri).get_model_version(name, version).tags)


def version_run(uri: str, name: str, version: str) -> str | None:
    """The run that logged a registered model version (None when unknown)."""
    return mlflow_client(uri).get_model_version(name, version).run_id


def register_run_model(uri: str, run_id: str, name: str, description: str) -> str | None:
    """Register the student a run logged; None if it logged none."""
    client = mlflow_client(uri)
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
    with fluent(uri), contextlib.redirect_stderr(io.StringIO()):
        return mlflow.register_model(model_uri, name)


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
        with fluent(uri), mlflow.start_run(run_id=run_id):
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
    client = mlflow_client(uri)
    client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    if model_metrics and getattr(info, "model_id", None):
        now = int(1000 * time.time())
        linked = [
            mlflow.entities.Metric(
                metric_name(k), float(v), now, metrics_step, model_id=info.model_id
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
    client = mlflow_client(uri)
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
    with fluent(uri):  # models:/ resolution reads the global registry URI
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder))
    return Path(local)
