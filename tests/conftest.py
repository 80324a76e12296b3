"""Shared test helpers: tiny hand-made COCO datasets written to tmp folders, the tiny spec of
the end-to-end tests (`tiny_spec` / `tiny_spec_dict` fixtures), a local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.spec.loader import load_spec_dict
from orchestrator.spec.paths import resolve_paths

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


def make_tiny_spec(base, name="tiny", epochs=2, workers=0, register_as="tiny-model", **overrides):
    """The tiny DETR spec (8 train / 4 val 64 px images), validated, paths resolved to `base`."""
    data = make_tiny_spec_dict(base, name, epochs, workers, register_as, **overrides)
    return resolve_paths(load_spec_dict(data, source="test"), base)


def make_tiny_spec_dict(
    base, name="tiny", epochs=2, workers=0, register_as="tiny-model", **overrides
):
    """The tiny DETR spec as a plain dict; `overrides` are dotted paths."""
    data = {
        "name": name,
        "seed": 0,
        "data": {
            "source": {
                "kind": "synthetic",
                "train_images": 8,
                "val_images": 4,
                "image_size": 64,
                "cache_dir": str(base / "cache"),
            },
            "train_scales": [64],
            "max_size": 96,
            "crop": False,
            "eval_size": 64,
            "batch_size": 4,
            "num_workers": 0,
        },
        "student": {
            "architecture": "detr",
            "backbone": "tiny",
            "tiny_width": 8,
            "levels": ["C4"],
            "hidden_dim": 32,
            "num_heads": 4,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "ffn_dim": 64,
            "num_queries": 8,
            "dropout": 0.0,
        },
        "optim": {"lr": 1e-3, "schedule": "step", "step_epochs": [1]},
        "train": {"epochs": epochs, "log_every": 1},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        # pt2 and ONNX export take seconds per run: tests that check them turn them on
        "mlflow": {
            "register_as": register_as,
            "log_images": 2,
            "model_format": "pickle",
            "onnx": False,
        },
    }
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


@pytest.fixture
def tiny_spec():
    """`tiny_spec(base, name=..., epochs=..., workers=..., register_as=..., **dotted)`."""
    return make_tiny_spec


@pytest.fixture
def tiny_spec_dict():
    """`tiny_spec_dict(base, ...)`: the tiny spec as a plain dict (see make_tiny_spec_dict)."""
    return make_tiny_spec_dict


@pytest.fixture(scope="session")
def hf_teacher_folders(tmp_path_factory):
    """Every HF class the teacher adapter reads, tiny and saved as a model folder, by kind."""
    from tests.hf_teachers import KINDS, save_tiny

    base = tmp_path_factory.mktemp("hf_teachers")
    return {kind: save_tiny(kind, base / kind) for kind in KINDS}
