"""Seeded synthetic "shapes" dataset in COCO detection format.

Small, fast and fully deterministic: the same seed and parameters give byte-identical files, so
tests and smoke runs can train and evaluate detectors without downloading COCO. Category ids are
deliberately non-contiguous, as in COCO, to catch code that assumes ``label == category_id``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from orchestrator.data.clutter import add_distractors, add_texture, visible_boxes
from orchestrator.data.shape_outlines import OUTLINES, SHAPES, UNIT_AREAS

logger = logging.getLogger("detrdistill")

CATEGORY_IDS = (1, 3, 7, 8, 12, 15, 20, 24)

SPLITS: tuple[str, ...] = ("train", "val")

# Bump whenever the generated content changes, so ensure_shapes() never reuses stale caches.
FORMAT_VERSION = 1

# Object sizes are drawn per COCO size bucket (sqrt(area) as a fraction of the image side,
# 32/128 and 96/128 being COCO's small/medium/large limits), so every bucket is well populated.
# Each row: (probability, low, high).
SIZE_BUCKETS = ((0.40, 0.07, 0.25), (0.35, 0.25, 0.75), (0.25, 0.75, 0.92))
# `small_objects`: a bucket of tiny ones (2.5-7% of the side) and fewer large ones
SMALL_SIZE_BUCKETS = (
    (0.30, 0.025, 0.07),
    (0.30, 0.07, 0.25),
    (0.25, 0.25, 0.75),
    (0.15, 0.75, 0.92),
)
# the harder options, off by default (the default dataset and its cache folder are unchanged)
HARD_DEFAULTS = {"distractors": 0, "occlusion": 0.0, "textured": False, "small_objects": False}
MIN_EXTENT_PX = 6.0
MAX_IOU = 0.2
MAX_COVER = 0.3
PLACEMENT_TRIES = 30
COLOR_CANDIDATES = 48
MIN_COLOR_DISTANCE = 100.0


def _check_int(name: str, value: Any, low: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}; {fix}")


def _validate(
    num_train: int,
    num_val: int,
    image_size: int,
    seed: int,
    num_classes: int,
    max_objects: int,
    distractors: int = 0,
    occlusion: float = 0.0,
    textured: bool = False,
    small_objects: bool = False,
) -> None:
    _check_int("distractors", distractors, 0, "pass a non-negative count (--distractors)")
    if isinstance(occlusion, bool) or not isinstance(occlusion, int | float):
        raise ValueError(f"occlusion must be a probability, got {occlusion!r}")
    if not 0.0 <= occlusion <= 1.0:
        raise ValueError(f"occlusion must be between 0 and 1, got {occlusion}; (--occlusion)")
    _check_int("num_train", num_train, 0, "pass a non-negative image count (--train)")
    _check_int("num_val", num_val, 0, "pass a non-negative image count (--val)")
    _check_int("image_size", image_size, 32, "use an image side of at least 32 px (--image-size)")
    _check_int("seed", seed, 0, "use a non-negative seed (--seed)")
    _check_int("max_objects", max_objects, 1, "allow at least one object per image")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(
            f"num_classes must be between 1 and {len(SHAPES)} (the available shapes), "
            f"got {num_classes}; pick a value in that range (--classes)"
        )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random base colour plus a linear gradient plus a few faint lines and blobs."""
    base = rng.uniform(0, 255, 3)
    delta = rng.uniform(-70, 70, 3)
    angle = rng.uniform(0, 2 * np.pi)
    coords = (np.arange(size) + 0.5) / size
    t = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6) - 0.5
    bg = np.clip(base + t[:, :, None] * delta, 0, 255).round().astype(np.uint8)

    image = Image.fromarray(bg)
    draw = ImageDraw.Draw(image)

    def faint(x: float, y: float, spread: int) -> tuple[int, int, int]:
        local = bg[int(np.clip(y, 0, size - 1)), int(np.clip(x, 0, size - 1))].astype(int)
        offset = rng.integers(-spread, spread + 1, 3)
        return tuple(int(v) for v in np.clip(local + offset, 0, 255))

    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = rng.uniform(0, size, 2)
        length, theta = rng.uniform(0.1, 0.3) * size, rng.uniform(0, 2 * np.pi)
        x1, y1 = x0 + length * math.cos(theta), y0 + length * math.sin(theta)
        colour = faint((x0 + x1) / 2, (y0 + y1) / 2, 15)
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.03, 0.12, 2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=faint(cx, cy, 10))
    return np.array(image)


def _box_overlaps(box: np.ndarray, placed: list[np.ndarray]) -> bool:
    """True when `box` (x0, y0, x1, y1) overlaps a placed box more than the limits allow."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        other_area = (other[2] - other[0]) * (other[3] - other[1])
        if inter / (area + other_area - inter) > MAX_IOU or inter / other_area > MAX_COVER:
            return True
    return False


def _pick_colour(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """A random colour far (in RGB) from every pixel already in `region`."""
    # Quantise to 6 bits per channel so the distance check runs on a few hundred colours at most.
    q = region.reshape(-1, 3).astype(np.int32) >> 2
    packed = np.unique((q[:, 0] << 12) | (q[:, 1] << 6) | q[:, 2])
    present = np.stack([packed >> 12, (packed >> 6) & 63, packed & 63], axis=1) * 4 + 2
    candidates = rng.integers(0, 256, (COLOR_CANDIDATES, 3))
    diff = candidates[:, None, :] - present[None, :, :]
    nearest = np.sqrt((diff**2).sum(axis=2)).min(axis=1)
    good = np.flatnonzero(nearest >= MIN_COLOR_DISTANCE)
    return candidates[good[0] if good.size else int(nearest.argmax())]


def _sample_size(rng: np.random.Generator, size: int, buckets: tuple = SIZE_BUCKETS) -> float:
    weights = np.array([w for w, _, _ in buckets])
    _, low, high = buckets[int(rng.choice(len(buckets), p=weights / weights.sum()))]
    return size * math.exp(rng.uniform(math.log(low), math.log(high)))


def _render_image(
    rng: np.random.Generator, size: int, params: dict[str, Any]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One noisy image and its objects (class index, pixel box, area, fill colour)."""
    canvas = _background(rng, size)
    if params.get("textured"):
        add_texture(rng, canvas)
    if params.get("distractors"):
        add_distractors(rng, canvas, int(rng.integers(0, params["distractors"] + 1)))
    buckets = SMALL_SIZE_BUCKETS if params.get("small_objects") else SIZE_BUCKETS
    occlusion = params.get("occlusion", 0.0)
    owner = np.zeros((size, size), np.int32) if occlusion > 0 else None  # who shows, per pixel
    count = int(rng.integers(1, params["max_objects"] + 1))
    plans = []
    for _ in range(count):
        cls = int(rng.integers(0, params["num_classes"]))
        side = _sample_size(rng, size, buckets) / math.sqrt(UNIT_AREAS[SHAPES[cls]])
        angle = rng.uniform(0, 2 * np.pi) if rng.random() < 0.5 else 0.0
        plans.append((side, cls, angle))
    # Largest first: big objects only fit on an empty-ish canvas.
    plans.sort(key=lambda plan: -plan[0])

    objects: list[dict[str, Any]] = []
    placed: list[np.ndarray] = []
    for side, cls, angle in plans:
        c, s = math.cos(angle), math.sin(angle)
        pts = OUTLINES[SHAPES[cls]] @ np.array([[c, s], [-s, c]]) * side
        extent = pts.max(axis=0) - pts.min(axis=0)
        # 1 px margin each side so the rasterised shape is never clipped by the image border.
        scale = min(1.0, (size - 2) / extent.max())
        scale = max(scale, MIN_EXTENT_PX / extent.max())
        pts, extent = pts * scale, extent * scale
        pts = pts - pts.min(axis=0)
        may_cover = occlusion > 0 and rng.random() < occlusion  # may lie over earlier ones
        for _ in range(PLACEMENT_TRIES):
            offset = 1 + rng.uniform(0, 1, 2) * (size - 2 - extent)
            box = np.concatenate([offset, offset + extent])
            if may_cover or not _box_overlaps(box, placed):
                break
        else:
            continue
        # PIL puts pixel centres on integer coordinates, COCO on half-integers.
        shape_pts = pts + offset - 0.5
        x0, y0 = np.floor(shape_pts.min(axis=0)).astype(int)
        x1, y1 = np.ceil(shape_pts.max(axis=0)).astype(int) + 1
        mask_image = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
        ImageDraw.Draw(mask_image).polygon(
            [(float(x - x0), float(y - y0)) for x, y in shape_pts], fill=255
        )
        mask = np.asarray(mask_image) > 0
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        pad = 3
        region = canvas[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad]
        colour = _pick_colour(rng, region)
        canvas[y0:y1, x0:x1][mask] = colour
        if owner is not None:
            owner[y0:y1, x0:x1][mask] = len(objects) + 1
        bx0, by0 = x0 + int(cols[0]), y0 + int(rows[0])
        bx1, by1 = x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1
        placed.append(np.array([bx0, by0, bx1, by1], dtype=float))
        objects.append(
            {
                "class_index": cls,
                "bbox": [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                "area": round(UNIT_AREAS[SHAPES[cls]] * (side * scale) ** 2, 3),
                "color": [int(v) for v in colour],
            }
        )
    if owner is not None:  # occluded objects: their visible box; hidden ones are not annotated
        shown = visible_boxes(owner, len(objects))
        objects = [
            dict(obj, bbox=box[0], area=float(box[1]))
            for obj, box in zip(objects, shown, strict=True)
            if box is not None
        ]
    if not objects:
        raise RuntimeError("internal error: synthetic image ended up with no objects")
    sigma = rng.uniform(1.5, 5.0)
    noisy = canvas + rng.standard_normal(canvas.shape, dtype=np.float32) * sigma
    return np.clip(noisy.round(), 0, 255).astype(np.uint8), objects


def _write_split(root: Path, split: str, count: int, params: dict[str, Any]) -> tuple[int, int]:
    images_dir = root / split
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    size = params["image_size"]
    split_key = SPLITS.index(split)
    for index in range(count):
        # One stream per image: a split's first N images do not depend on how many follow.
        rng = np.random.default_rng(np.random.SeedSequence([params["seed"], split_key, index]))
        pixels, objects = _render_image(rng, size, params)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(images_dir / file_name, format="PNG", compress_level=1)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[obj["class_index"]],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                    "color": obj["color"],
                }
            )
    categories = [
        {"id": CATEGORY_IDS[i], "name": SHAPES[i], "supercategory": "shape"}
        for i in range(params["num_classes"])
    ]
    dataset = {
        "info": {
            "description": f"synthetic shapes, {split} split",
            "generator": "orchestrator.data.synth",
            "version": FORMAT_VERSION,
            "params": params,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = root / "annotations" / f"{split}.json"
    ann_file.parent.mkdir(exist_ok=True)
    ann_file.write_text(json.dumps(dataset, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    return len(images), len(annotations)


def generate_shapes(
    out_dir: str | os.PathLike[str],
    num_train: int = 64,
    num_val: int = 16,
    image_size: int = 128,
    seed: int = 0,
    num_classes: int = 3,
    max_objects: int = 4,
    distractors: int = 0,
    occlusion: float = 0.0,
    textured: bool = False,
    small_objects: bool = False,
    force: bool = False,
) -> Path:
    """Write the shapes dataset (train/, val/, annotations/) to out_dir and return it, absolute.

    The harder options: up to `distractors` unannotated clutter items per image, each object
    lying over earlier ones with probability `occlusion` (annotated with its visible box),
    `textured` backgrounds, and `small_objects` (a bucket of 2.5-7%-of-side objects).
    Everything is written to a temporary sibling folder first and renamed into place, so
    out_dir is either absent, the old content, or the complete new dataset.
    """
    hard = {
        "distractors": distractors,
        "occlusion": occlusion,
        "textured": textured,
        "small_objects": small_objects,
    }
    _validate(num_train, num_val, image_size, seed, num_classes, max_objects, **hard)
    out = Path(os.path.abspath(os.path.expanduser(out_dir)))
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"output folder {out} already exists and is not empty; "
            "pass force=True (CLI: --force) to replace it"
        )
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "num_classes": num_classes,
        "max_objects": max_objects,
        **{k: v for k, v in hard.items() if v != HARD_DEFAULTS[k]},  # defaults: as before
    }
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's private 0700 would otherwise stick to the final folder
        counts = {
            split: _write_split(tmp, split, n, params)
            for split, n in zip(SPLITS, (num_train, num_val), strict=True)
        }
        if force and out.exists():
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
        try:
            os.rename(tmp, out)
        except OSError as err:
            # Lost a race: someone else put a non-empty folder there after our first check.
            raise FileExistsError(
                f"output folder {out} appeared while generating; "
                "pass force=True (CLI: --force) to replace it"
            ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    summary = ", ".join(f"{k} {n} images / {m} objects" for k, (n, m) in counts.items())
    logger.info("wrote shapes dataset %s: %s in %.2fs", out, summary, seconds)
    return out


def _is_complete(root: Path) -> bool:
    return all(split_paths(root, split)[1].is_file() for split in SPLITS)


def ensure_shapes(cache_dir: str | os.PathLike[str], **params: Any) -> Path:
    """Folder under cache_dir holding the dataset for `params`, generated on first use.

    `params` are generate_shapes' keyword arguments (defaults filled in, out_dir and force not
    allowed). The folder is named after a hash of the full parameter set, so different params
    never collide. Concurrent callers are safe: the loser of a generation race uses the winner's
    folder.
    """
    signature = inspect.signature(generate_shapes)
    allowed = [name for name in signature.parameters if name not in ("out_dir", "force")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"ensure_shapes: unknown parameter(s) {unknown}; allowed: {allowed}")
    full = {name: params.get(name, signature.parameters[name].default) for name in allowed}
    _validate(**full)
    # the harder options at their defaults stay out of the key: earlier caches stay valid
    named = {k: v for k, v in full.items() if k not in HARD_DEFAULTS or v != HARD_DEFAULTS[k]}
    key = json.dumps({**named, "format_version": FORMAT_VERSION}, sort_keys=True)
    folder = Path(os.path.abspath(os.path.expanduser(cache_dir)))
    folder = folder / f"shapes-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if _is_complete(folder):
        return folder
    # A folder without annotations was not written by us (our renames are atomic): replace it.
    stale = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    try:
        return generate_shapes(folder, force=stale, **full)
    except FileExistsError:
        if _is_complete(folder):
            return folder
        raise


def split_paths(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """(images_dir, annotations_file) of split 'train' or 'val' under a generate_shapes root."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    base = Path(os.path.abspath(os.path.expanduser(root)))
    return base / split, base / "annotations" / f"{split}.json"
