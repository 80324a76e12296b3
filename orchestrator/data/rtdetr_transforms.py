"""RT-DETR's training augmentation (rtdetrv2 `dataloader.yml`) on `torchvision.transforms.v2`.

Per image: RandomPhotometricDistort, RandomZoomOut (black fill), RandomIoUCrop, sanitise,
horizontal flip and a square resize (aspect not kept), then the shared `DetectionTransform`
tail (clamp, sanitise, [0,1], ImageNet normalisation). Per batch, `BatchMultiScale` resizes the
whole collated batch to a random square side. The first three per-image ops and the batch
multi-scale stop at `stop_epoch`: `orchestrator.data.loader.set_epoch` tells both the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from detr_models.batch import Batch
from orchestrator.data.transforms import DetectionTransform


class UntilEpoch(v2.Transform):
    """Apply `inner` in the epochs before `stop_epoch` and pass the inputs through from it on
    (None: never stop). The epoch is 0 until `set_epoch` says otherwise."""

    def __init__(self, inner: v2.Transform, stop_epoch: int | None) -> None:
        super().__init__()
        if stop_epoch is not None and stop_epoch < 1:
            raise ValueError(f"UntilEpoch needs stop_epoch >= 1 or None, got {stop_epoch}")
        self.inner = inner
        self.stop_epoch = stop_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def active(self) -> bool:
        return self.stop_epoch is None or self.epoch < self.stop_epoch

    def forward(self, *inputs: Any) -> Any:
        if self.active:
            return self.inner(*inputs)
        return inputs if len(inputs) > 1 else inputs[0]


def rtdetr_train_transforms(
    size: int = 640,
    photometric_p: float = 0.5,
    zoom_out_p: float = 0.5,
    iou_crop_p: float = 0.8,
    flip_p: float = 0.5,
    stop_epoch: int | None = None,
) -> DetectionTransform:
    """RT-DETR's per-image training transform ending in a `size` x `size` image.

    Photometric distortion, zoom-out and IoU crop (each left out at probability 0) stop at
    `stop_epoch`; flip and resize always run. Boxes are tv_tensors throughout, so every op
    moves them with the pixels; those cropped away are dropped with their labels.
    """
    early: list[v2.Transform] = []
    if photometric_p > 0:
        early.append(v2.RandomPhotometricDistort(p=photometric_p))
    if zoom_out_p > 0:
        early.append(v2.RandomZoomOut(fill=0, p=zoom_out_p))
    if iou_crop_p > 0:
        early.append(v2.RandomApply([v2.RandomIoUCrop()], p=iou_crop_p))
    scheduled = [UntilEpoch(v2.Compose(early), stop_epoch)] if early else []
    return DetectionTransform(
        [
            *scheduled,
            # RandomIoUCrop zeroes the boxes whose centre left the crop: drop them here
            v2.SanitizeBoundingBoxes(min_size=1.0),
            v2.RandomHorizontalFlip(p=flip_p),
            v2.Resize((size, size), antialias=True),
        ]
    )


class BatchMultiScale:
    """Resize a whole training batch to a square side drawn from `scales` (RT-DETR's multi-scale
    training) in the epochs before `stop_epoch` (None: always).

    The side comes from torch's generator, which the DataLoader seeds per worker and epoch (or,
    without workers, the run's seeded global generator), so a run repeats. The reference resizes
    with nearest neighbour; this one is bilinear.
    """

    def __init__(self, scales: Sequence[int], stop_epoch: int | None = None) -> None:
        if not scales or min(scales) < 1:
            raise ValueError(f"BatchMultiScale needs positive scales, got {list(scales)}")
        if stop_epoch is not None and stop_epoch < 1:
            raise ValueError(f"BatchMultiScale needs stop_epoch >= 1 or None, got {stop_epoch}")
        self.scales = list(scales)
        self.stop_epoch = stop_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def active(self) -> bool:
        return self.stop_epoch is None or self.epoch < self.stop_epoch

    def __call__(self, batch: Batch) -> Batch:
        if not self.active:
            return batch
        side = self.scales[int(torch.randint(len(self.scales), ()))]
        return resize_batch(batch, side)


def resize_batch(batch: Batch, side: int) -> Batch:
    """`batch` resized to `side` x `side`: images bilinearly, each image's unpadded region (its
    `size` and the pixel mask) scaled with it. Boxes are normalised to that region and keep
    their values."""
    _, _, height, width = batch.images.shape
    images = F.interpolate(
        batch.images, size=(side, side), mode="bilinear", align_corners=False
    )  # [B,3,side,side]
    mask = torch.ones((len(batch), side, side), dtype=torch.bool)  # [B,side,side]
    targets = []
    for i, target in enumerate(batch.targets):
        valid = ~batch.pixel_mask[i]  # [H,W]
        h = int(valid.any(dim=1).sum())
        w = int(valid.any(dim=0).sum())
        new_h = min(side, max(1, round(h * side / height)))
        new_w = min(side, max(1, round(w * side / width)))
        mask[i, :new_h, :new_w] = False
        targets.append({**target, "size": torch.tensor((new_h, new_w), dtype=torch.long)})
    return Batch(images, mask, targets)
