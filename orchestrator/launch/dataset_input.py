"""A run's datasets as MLflow inputs (the UI's Datasets column): per split a name, a digest
of its annotation file, its source, and a profile of images, boxes and classes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from orchestrator.spec.sections import DataSpec, SyntheticData


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """The first 12 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:12]


def dataset_inputs(data: DataSpec, datasets: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per split (`datasets`: split -> CocoDetection): name, digest, source,
    profile, context (MLflow's `training` / `validation`)."""
    synthetic = isinstance(data.source, SyntheticData)
    entries = []
    for split, dataset in datasets.items():
        annotations = Path(dataset.annotations_file)
        root = annotations.parent.parent.name if synthetic else annotations.stem
        profile = {
            "split": split,
            "images": len(dataset),
            "boxes": len(dataset.coco.anns),
            "classes": len(dataset.class_names),
            "class_names": dataset.class_names[:100],
        }
        entries.append(
            {
                "name": f"{root}/{split}" if synthetic else root,
                "digest": file_digest(annotations),
                "source": str(annotations),
                "profile": profile,
                "context": "training" if split == "train" else "validation",
            }
        )
    return entries
