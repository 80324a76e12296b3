"""Paths in a spec: `resolve_paths` makes a spec safe to ship to Ray workers (they change
directory), `is_uri` tells a URI from a path, `default_tracking_uri` is the one MLflow default."""

from __future__ import annotations

import os
import re
from pathlib import Path

from orchestrator.spec.sections import ExperimentSpec

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def name_problem(value: str, what: str) -> str | None:
    """Why `value` cannot name a run (it becomes a folder and an MLflow tag), or None: letters,
    digits, '_', '.', '-', starting with a letter or digit, no '..', at most 128 characters."""
    if SAFE_NAME.match(value) and ".." not in value:
        return None
    return (
        f"{what} {value!r}: use letters, digits, '_', '.' and '-' only, starting with a letter "
        "or digit, without '..' (it names a folder under --storage and an MLflow run)"
    )


def default_tracking_uri(base_dir: str | Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI when set, else `sqlite:///<base_dir or cwd>/mlflow.db` (absolute)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    base = Path(os.path.abspath(base_dir or Path.cwd()))
    return _absolute_tracking_uri(uri, base) if uri else f"sqlite:///{base / 'mlflow.db'}"


def resolve_paths(spec: ExperimentSpec, base_dir: str | Path) -> ExperimentSpec:
    """A copy with every filesystem path absolute (relative to base_dir) and MLflow defaults set.

    Ray workers and Tune trials change directory, so the driver resolves paths once. URIs
    (`models:/`, `runs:/`, `s3://`...) and absolute paths are left alone. A missing tracking URI
    becomes $MLFLOW_TRACKING_URI when set, else `sqlite:///<base_dir>/mlflow.db`; a missing MLflow
    experiment becomes the spec name.
    """
    base = Path(os.path.abspath(base_dir))
    resolved = spec.model_copy(deep=True)
    source = resolved.data.source
    if source.kind == "synthetic":
        source.cache_dir = _absolute(source.cache_dir, base)
    else:
        for name in ("train_images", "train_annotations", "val_images", "val_annotations"):
            setattr(source, name, _absolute(getattr(source, name), base))
    teacher = resolved.teacher
    native = teacher if teacher is not None and hasattr(teacher, "weights") else None
    models = [resolved.student] + ([native.model] if native else [])
    for model in models:
        if model.backbone_weights is not None and not is_uri(model.backbone_weights):
            model.backbone_weights = _absolute(model.backbone_weights, base)
    if resolved.student.weights is not None and not is_uri(resolved.student.weights):
        resolved.student.weights = _absolute(resolved.student.weights, base)
    if native is not None and not is_uri(native.weights):
        native.weights = _absolute(native.weights, base)
    if teacher is not None and native is None and (base / teacher.hf).is_dir():
        teacher.hf = _absolute(teacher.hf, base)  # a local folder; otherwise a Hub id
    uri = resolved.mlflow.tracking_uri
    resolved.mlflow.tracking_uri = (
        _absolute_tracking_uri(uri, base) if uri else default_tracking_uri(base)
    )
    resolved.mlflow.experiment = resolved.mlflow.experiment or resolved.name
    return resolved


def is_uri(text: str) -> bool:
    """True for `scheme:...` (models:/, runs:/, s3://, http://...), not for paths."""
    # two letters at least, so that a Windows drive (C:\...) is not a scheme
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text) is not None


def _absolute(path: str, base: Path) -> str:
    return os.path.normpath(base / Path(path).expanduser())


def _absolute_tracking_uri(uri: str, base: Path) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        database = uri[len(prefix) :]
        # sqlite:////abs.db is absolute already; :memory: is no file
        if database and not database.startswith("/") and database != ":memory:":
            return prefix + _absolute(database, base)
        return uri
    return uri if is_uri(uri) else _absolute(uri, base)
