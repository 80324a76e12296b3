"""`detrdistill import`: a pretrained checkpoint users already hold (a local Hugging Face model
folder, or `hf:<org>/<name>[@revision]` from the Hub) -> this product's plain model file, with
its class names, optionally registered in MLflow. Nothing is unpickled as code."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detr_models.config import REFERENCE_OPTIONS
from detr_models.pretrained.coco_names import label_categories
from detr_models.pretrained.hf_folder import Imported, ImportError_, import_hf
from detr_models.pretrained.official import import_official
from orchestrator.errors import UserInputError
from orchestrator.training import checkpoints
from orchestrator.training.hub_source import hub_folder

logger = logging.getLogger("detrdistill")

IMPORTS_EXPERIMENT = "imports"


@dataclass
class ImportResult:
    model_file: Path
    imported: Imported
    registered_version: str | None


OFFICIAL_FORMATS = {
    "detr": "detr",
    "deformable-detr": "deformable_detr",
    "conditional-detr": "conditional_detr",
    "dab-detr": "dab_detr",
    "rtdetr-v2": "rtdetr_v2",
}


def import_checkpoint(
    source: str,
    out: Path,
    register_as: str | None = None,
    tracking_uri: str | None = None,
    size: int | None = None,
    max_size: int | None = None,
    fmt: str = "auto",
) -> ImportResult:
    """Import `source` into the model file `out` (written only when everything mapped).
    `fmt`: auto (a file is an official `.pth`, a folder or hf:... a Hugging Face model), hf,
    or an official repo's format (detr, deformable-detr, conditional-detr, dab-detr,
    rtdetr-v2)."""
    if out.exists() and out.is_dir():
        raise UserInputError(f"--out {out} is a folder; give a file name such as {out}/model.pt")
    official = fmt in OFFICIAL_FORMATS or (fmt == "auto" and Path(source).is_file())
    try:
        if official:
            if not Path(source).is_file():
                raise UserInputError(f"{source}: file not found (an official .pth checkpoint)")
            imported = import_official(source)
        else:
            imported = import_hf(hub_folder(source))
    except ImportError_ as err:
        raise UserInputError(str(err)) from None
    expected = OFFICIAL_FORMATS.get(fmt)
    if expected and imported.config.architecture != expected:
        raise UserInputError(
            f"{source}: --format {fmt}, but the file holds a {imported.config.architecture}"
        )
    extra = {
        "class_names": imported.class_names,
        "label_to_category": label_categories(imported.class_names),
        **_eval_resize(imported.config.architecture, size, max_size),
        "source": source,
    }
    checkpoints.save_model_file(out, imported.model, imported.config, extra)
    config = imported.config
    options = ", ".join(f"{k}={v}" for k, v in REFERENCE_OPTIONS[config.architecture].items())
    logger.info(
        f"imported {source}: {config.architecture}, backbone {config.backbone}, "
        f"{config.num_classes} classes, {imported.mapped} tensors mapped, "
        f"{sum(p.numel() for p in imported.model.parameters()) / 1e6:.1f} M parameters\n"
        f"  reference options: {options}\n"
        + "".join(f"  note: {note}\n" for note in imported.notes)
        + f"  wrote {out}"
    )
    version = None
    if register_as:
        version = _register(out, imported, extra, register_as, tracking_uri, source)
        logger.info(f"  registered as models:/{register_as}/{version}")
    return ImportResult(out, imported, version)


def _register(
    model_file: Path,
    imported: Imported,
    extra: dict,
    name: str,
    tracking_uri: str | None,
    source: str,
) -> str | None:
    from orchestrator import registry, tracking
    from orchestrator.launch.export import ExportedDetector
    from orchestrator.spec.paths import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    experiment_id = tracking.ensure_experiment(uri, IMPORTS_EXPERIMENT)
    run_id, _ = tracking.find_or_create_run(
        uri, experiment_id, f"import-{name}", f"import-{name}", {"source": source}
    )
    run_logger = tracking.RunLogger(uri, run_id)
    try:
        run_logger.artifact(model_file, "model")
        example = np.zeros((1, 3, 64, 64), dtype=np.float32)
        exported = ExportedDetector(imported.model, extra).eval()
        version = registry.log_model(
            uri, run_id, exported, example, model_file, name, f"imported from {source}"
        )
    except Exception:
        run_logger.finish("FAILED")
        raise
    run_logger.finish()
    return version


def _eval_resize(architecture: str, size: int | None, max_size: int | None) -> dict:
    """How the model file says to resize for eval/predict: RT-DETR was trained on 640 x 640
    squares; the others on a shortest side of 800, longest 1333 (unless given)."""
    if architecture == "rtdetr_v2" and max_size is None:
        side = size or 640
        return {"eval_size": side, "max_size": side, "eval_square": True}
    return {"eval_size": size or 800, "max_size": max_size or 1333}
