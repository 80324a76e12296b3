"""DETR-style train and eval transforms on `torchvision.transforms.v2` with box-aware tensors.

Sizes are parameters so that CPU runs use small images; the defaults are DETR's COCO recipe
(shorter side 480..800 step 32, max 1333; crop branch 400/500/600 then a 384..600 crop).
RT-DETR's recipe is in `rtdetr_transforms.py` and ends in the same `DetectionTransform`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detr_models.backbone import IMAGENET_MEAN, IMAGENET_STD

COCO_TRAIN_SCALES = tuple(range(480, 801, 32))
COCO_MAX_SIZE = 1333
COCO_CROP_RESIZE = (400, 500, 600)
COCO_CROP_SIZE = (384, 600)


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose height and width are drawn from [min_size, max_size].

    Sides larger than the image are clipped to the image, so small images are never padded.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(
                f"RandomSizeCrop needs 0 < min_size <= max_size, got {min_size}, {max_size}"
            )
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_w = _randint(min(self.min_size, width), min(width, self.max_size))
        crop_h = _randint(min(self.min_size, height), min(height, self.max_size))
        top = _randint(0, height - crop_h)
        left = _randint(0, width - crop_w)
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's generator (seeded per loader worker)."""
    return int(torch.randint(low, high + 1, ()).item())


class DetectionTransform:
    """Compose v2 augmentations (on the uint8 image and pixel boxes), drop boxes cropped away,
    convert and normalise.

    `set_epoch(epoch)` reaches every augmentation that has one (ops that stop at an epoch).
    """

    def __init__(self, augment: Sequence[v2.Transform]) -> None:
        self.epoch_scheduled = [t for t in augment if hasattr(t, "set_epoch")]
        self.pipeline = v2.Compose(
            [
                *augment,
                v2.ClampBoundingBoxes(),
                # default labels_getter finds target["labels"] and filters it with the boxes
                v2.SanitizeBoundingBoxes(min_size=1.0),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ]
        )

    def __call__(
        self, image: tv_tensors.Image, target: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.pipeline(image, target)

    def set_epoch(self, epoch: int) -> None:
        for transform in self.epoch_scheduled:
            transform.set_epoch(epoch)


def train_transforms(
    scales: Sequence[int] = COCO_TRAIN_SCALES,
    max_size: int = COCO_MAX_SIZE,
    crop_resize: Sequence[int] | None = COCO_CROP_RESIZE,
    crop_size: tuple[int, int] = COCO_CROP_SIZE,
    flip_prob: float = 0.5,
) -> DetectionTransform:
    """DETR training augmentation: flip, then either a multi-scale resize or resize-crop-resize.

    `crop_resize=None` switches the crop branch off (plain multi-scale resize).
    """
    if not scales:
        raise ValueError("train_transforms needs at least one scale")
    resize = v2.RandomShortestSize(min_size=list(scales), max_size=max_size, antialias=True)
    if crop_resize:
        crop_branch = v2.Compose(
            [
                v2.RandomShortestSize(min_size=list(crop_resize), antialias=True),
                RandomSizeCrop(*crop_size),
                v2.RandomShortestSize(min_size=list(scales), max_size=max_size, antialias=True),
            ]
        )
        resize = v2.RandomChoice([resize, crop_branch])
    return DetectionTransform([v2.RandomHorizontalFlip(p=flip_prob), resize])


def eval_transforms(
    size: int = 800, max_size: int = COCO_MAX_SIZE, square: bool = False
) -> DetectionTransform:
    """Deterministic evaluation transform: resize the shorter side to `size` (longer <= max_size),
    or with `square` to a `size` x `size` square, aspect not kept (RT-DETR; max_size unused)."""
    if square:
        return DetectionTransform([v2.Resize((size, size), antialias=True)])
    return DetectionTransform([v2.Resize(size, max_size=max_size, antialias=True)])
