"""COCO-format detection dataset: any `images/` folder plus an `annotations.json`.

Everything that can be wrong with the files is checked when the dataset is opened, so a bad
dataset fails before training starts, not halfway through an epoch.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torchvision import tv_tensors

import orchestrator.data.quiet_coco  # noqa: F401  (silences pycocotools)
from orchestrator.errors import DatasetError

logger = logging.getLogger("detrdistill")

# A transform takes (image, {"boxes": BoundingBoxes xyxy, "labels": int64}) and returns the same.
Transform = Callable[[tv_tensors.Image, dict[str, Any]], tuple[Any, dict[str, Any]]]


def load_coco_json(annotations_file: str | Path) -> dict[str, Any]:
    """Parse and check a COCO detection json; every problem names the file and the entry."""
    path = Path(annotations_file)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found; check the data paths of the spec")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: not valid json (line {err.lineno}, column {err.colno}: {err.msg}); "
            "fix or regenerate the file"
        ) from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: top level must be an object with images/annotations/categories"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing list '{key}'; a COCO detection json needs it")
    _check_entries(path, data)
    return data


def _check_entries(path: Path, data: dict[str, Any]) -> None:
    image_ids: set[int] = set()
    for entry in data["images"]:
        for key in ("id", "file_name", "width", "height"):
            if key not in entry:
                raise DatasetError(f"{path}: image entry {entry!r:.120} has no '{key}'")
        if entry["id"] in image_ids:
            raise DatasetError(f"{path}: image id {entry['id']} appears twice; ids must be unique")
        image_ids.add(entry["id"])
    category_ids: set[int] = set()
    for entry in data["categories"]:
        if "id" not in entry:
            raise DatasetError(f"{path}: category entry {entry!r:.120} has no 'id'")
        if entry["id"] in category_ids:
            raise DatasetError(f"{path}: category id {entry['id']} appears twice")
        category_ids.add(entry["id"])
    if not category_ids:
        raise DatasetError(f"{path}: 'categories' is empty; a detector needs at least one class")
    for ann in data["annotations"]:
        ann_id = ann.get("id", "?")
        if ann.get("image_id") not in image_ids:
            raise DatasetError(
                f"{path}: annotation id {ann_id} points to unknown image_id {ann.get('image_id')!r}"
            )
        if ann.get("category_id") not in category_ids:
            raise DatasetError(
                f"{path}: annotation id {ann_id} has unknown category_id "
                f"{ann.get('category_id')!r}; known ids: {sorted(category_ids)}"
            )
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        ):
            raise DatasetError(
                f"{path}: annotation id {ann_id} has bbox {bbox!r}; expected [x, y, w, h] numbers"
            )


MAX_BROKEN_IMAGES = 10  # undecodable images a run skips before it stops...
MAX_BROKEN_SHARE = 0.01  # ...or this share of the dataset, whichever is larger


class CocoDetection(torch.utils.data.Dataset):
    """A COCO detection dataset with contiguous labels and DETR-style targets.

    Category ids (possibly non-contiguous, like COCO's 1..90) map to labels 0..K-1 in sorted id
    order; `label_to_category` maps back. Crowd boxes are left out of the targets (COCOeval still
    sees them through `self.coco`). Boxes with no area inside the image are dropped and counted.
    Item `i` is `(image [3,H,W], target)` where target holds `boxes` (normalised cxcywh of the
    transformed image), `labels`, `image_id`, `orig_size` (H,W) and `size` (H,W).
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotations_file: str | Path,
        transforms: Transform | None = None,
        verify_images: bool = False,
        skip_broken: bool = True,
    ) -> None:
        self.skip_broken = skip_broken
        self.broken: set[int] = set()  # indices that failed to decode (this process)
        self.images_dir = Path(images_dir)
        self.annotations_file = Path(annotations_file)
        self.transforms = transforms
        data = load_coco_json(self.annotations_file)
        if not self.images_dir.is_dir():
            raise DatasetError(
                f"{self.images_dir}: image folder not found (annotations: {self.annotations_file})"
            )
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_category: list[int] = [c["id"] for c in categories]
        self.category_to_label = {cid: k for k, cid in enumerate(self.label_to_category)}
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in categories]
        self.images = sorted(data["images"], key=lambda im: im["id"])
        self._check_image_files(verify_images)
        self.image_ids = [im["id"] for im in self.images]
        self._boxes, self._labels, kept = self._build_targets(data["annotations"])
        # evaluation sees the ground truth training sees: dropped degenerate boxes are gone
        # (crowd boxes stay, COCOeval ignores them)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO()
            self.coco.dataset = {**data, "annotations": kept}
            self.coco.createIndex()

    @property
    def num_classes(self) -> int:
        return len(self.label_to_category)

    def __len__(self) -> int:
        return len(self.images)

    def _check_image_files(self, verify: bool) -> None:
        missing = [im for im in self.images if not (self.images_dir / im["file_name"]).is_file()]
        if missing:
            names = ", ".join(f"{im['file_name']} (image id {im['id']})" for im in missing[:5])
            raise DatasetError(
                f"{self.annotations_file}: {len(missing)} image file(s) missing under "
                f"{self.images_dir}: {names}; fix the paths or remove those entries"
            )
        if not verify:
            return
        for im in self.images:
            path = self.images_dir / im["file_name"]
            try:
                with Image.open(path) as img:
                    size = img.size
            except (UnidentifiedImageError, OSError) as err:
                raise DatasetError(
                    f"{path}: cannot read image (image id {im['id']}): {err}"
                ) from None
            if size != (im["width"], im["height"]):
                raise DatasetError(
                    f"{path}: image is {size[0]}x{size[1]} but {self.annotations_file} says "
                    f"{im['width']}x{im['height']} (image id {im['id']}); fix the json"
                )

    def _build_targets(self, annotations: list[dict]) -> tuple[dict, dict, list[dict]]:
        """(boxes, labels) per image id, and the annotations kept (crowd ones included)."""
        sizes = {im["id"]: (im["width"], im["height"]) for im in self.images}
        boxes: dict[int, list] = {i: [] for i in sizes}
        labels: dict[int, list] = {i: [] for i in sizes}
        dropped: list = []
        kept: list[dict] = []
        for ann in annotations:
            if ann.get("iscrowd", 0):
                kept.append(ann)
                continue
            width, height = sizes[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 <= x0 or y1 <= y0:
                dropped.append(ann.get("id", "?"))
                continue
            kept.append(ann)
            boxes[ann["image_id"]].append((x0, y0, x1, y1))
            labels[ann["image_id"]].append(self.category_to_label[ann["category_id"]])
        self.num_dropped = len(dropped)
        if dropped:
            logger.warning(
                "%s: dropped %d box(es) with zero/negative size or outside the image "
                "(annotation ids %s%s)",
                self.annotations_file,
                len(dropped),
                ", ".join(map(str, dropped[:5])),
                ", ..." if len(dropped) > 5 else "",
            )
        as_boxes = {i: np.asarray(b, dtype=np.float32).reshape(-1, 4) for i, b in boxes.items()}
        as_labels = {i: np.asarray(v, dtype=np.int64) for i, v in labels.items()}
        return as_boxes, as_labels, kept

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of item `index` (grayscale, palette and RGBA are converted)."""
        info = self.images[index]
        path = self.images_dir / info["file_name"]
        try:
            with Image.open(path) as img:
                if img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")  # PIL warns on palette+alpha straight to RGB
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(
                f"{path}: cannot read image (image id {info['id']}): {err}"
            ) from None

    def raw_target(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel xyxy boxes [N,4] and contiguous labels [N] of item `index`, untransformed."""
        image_id = self.image_ids[index]
        return self._boxes[image_id], self._labels[image_id]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Item `index`; an image that fails to decode (a truncated file) is skipped for the
        next one, logged and counted, unless `skip_broken` is off. Too many broken images
        (more than 1% and more than 10) stop the run with one message."""
        for step in range(len(self)):
            i = (index + step) % len(self)
            try:
                return self._item(i)
            except DatasetError as err:
                if not self.skip_broken:
                    raise
                self.broken.add(i)
                logger.warning(f"{err}; skipped ({len(self.broken)} broken image(s) so far)")
                if len(self.broken) > max(MAX_BROKEN_IMAGES, MAX_BROKEN_SHARE * len(self)):
                    raise DatasetError(
                        f"{self.images_dir}: {len(self.broken)} images cannot be decoded; "
                        "stopping. Run `detrdistill data check` on this dataset and fix or "
                        "remove the broken files"
                    ) from None
        raise DatasetError(f"{self.images_dir}: no image of this dataset can be decoded")

    def _item(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        img = self.load_image(index)
        width, height = img.size
        boxes, labels = self.raw_target(index)
        image = tv_tensors.Image(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes.copy()), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.from_numpy(labels.copy()),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, _finish_target(image, target, self.image_ids[index], (height, width))


def _finish_target(
    image: torch.Tensor, target: dict[str, Any], image_id: int, orig_size: tuple[int, int]
) -> dict[str, Any]:
    """Turn transformed pixel xyxy boxes into normalised cxcywh of the transformed image."""
    height, width = image.shape[-2:]
    xyxy = target["boxes"].as_subclass(torch.Tensor).float()  # [N,4]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    cxcywh = torch.stack(
        [
            (xyxy[:, 0] + xyxy[:, 2]) / 2,
            (xyxy[:, 1] + xyxy[:, 3]) / 2,
            xyxy[:, 2] - xyxy[:, 0],
            xyxy[:, 3] - xyxy[:, 1],
        ],
        dim=-1,
    )  # [N,4]
    return {
        "boxes": (cxcywh / scale).clamp(0.0, 1.0),
        "labels": target["labels"].long(),
        "image_id": int(image_id),
        "orig_size": torch.tensor(orig_size, dtype=torch.long),
        "size": torch.tensor((height, width), dtype=torch.long),
    }
