"""Shared test helpers: tiny hand-made COCO datasets written to tmp folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CATEGORIES = [
    {"id": 1, "name": "circle"},
    {"id": 3, "name": "square"},
    {"id": 7, "name": "triangle"},
]


def write_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> None:
    """A noisy image of the given PIL mode."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_coco(
    root: Path, images: list[dict], annotations: list[dict], categories=None
) -> tuple[Path, Path]:
    """Write images (entries may carry a 'mode') and the json; return (images_dir, json path)."""
    images_dir = root / "images"
    for i, entry in enumerate(images):
        write_image(
            images_dir / entry["file_name"],
            entry["width"],
            entry["height"],
            entry.get("mode", "RGB"),
            i,
        )
    data = {
        "images": [{k: v for k, v in im.items() if k != "mode"} for im in images],
        "annotations": annotations,
        "categories": categories if categories is not None else CATEGORIES,
    }
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps(data))
    return images_dir, ann_file


@pytest.fixture
def small_coco(tmp_path: Path) -> tuple[Path, Path]:
    """Three images: boxes of every class, one crowd box, one empty image, two degenerate boxes."""
    images = [
        {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 11, "file_name": "b.png", "width": 40, "height": 60, "mode": "L"},
        {"id": 12, "file_name": "c.png", "width": 50, "height": 50, "mode": "P"},
    ]
    annotations = [
        {
            "id": 1,
            "image_id": 10,
            "category_id": 1,
            "bbox": [4, 6, 20, 10],
            "area": 200,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 10,
            "category_id": 7,
            "bbox": [30, 20, 30, 25],
            "area": 750,
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 10,
            "category_id": 3,
            "bbox": [0, 0, 10, 10],
            "area": 100,
            "iscrowd": 1,
        },
        {
            "id": 4,
            "image_id": 11,
            "category_id": 3,
            "bbox": [5, 5, 20, 30],
            "area": 600,
            "iscrowd": 0,
        },
        {"id": 5, "image_id": 11, "category_id": 3, "bbox": [5, 5, 0, 30], "area": 0, "iscrowd": 0},
        {
            "id": 6,
            "image_id": 11,
            "category_id": 1,
            "bbox": [100, 100, 5, 5],
            "area": 25,
            "iscrowd": 0,
        },
    ]
    return write_coco(tmp_path, images, annotations)


@pytest.fixture(scope="module")
def ray_local():
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    yield
    ray.shutdown()
