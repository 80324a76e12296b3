"""Batching for detection: pad to the largest image with a pixel mask, and a loader factory
that works with and without torch.distributed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

from detr_models.batch import Batch


def collate_detection(
    samples: list[tuple[torch.Tensor, dict[str, Any]]], size_divisor: int = 1
) -> Batch:
    """Pad images to the largest height and width in the batch (rounded up to `size_divisor`).

    Padding is zero in the normalised image and True in the mask; boxes stay normalised to each
    image's own unpadded size (`target["size"]`).
    """
    if not samples:
        raise ValueError("collate_detection got an empty batch")
    images = [image.as_subclass(torch.Tensor) for image, _ in samples]
    max_h = max(im.shape[-2] for im in images)
    max_w = max(im.shape[-1] for im in images)
    if size_divisor > 1:
        max_h = -(-max_h // size_divisor) * size_divisor
        max_w = -(-max_w // size_divisor) * size_divisor
    batch = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))  # [B,3,H,W]
    mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool)  # [B,H,W]
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        batch[i, :, :h, :w] = image
        mask[i, :h, :w] = False
    return Batch(batch, mask, [target for _, target in samples])


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    size_divisor: int = 1,
    drop_last: bool = False,
    batch_transform: Callable[[Batch], Batch] | None = None,
) -> DataLoader:
    """A DataLoader for training (shuffled) or evaluation (in order).

    Under an initialised process group each rank gets its share through a DistributedSampler
    (call `set_epoch(loader, epoch)` every epoch). The seed fixes the order and the random
    augmentation of every worker, so a run is repeatable. `batch_transform` runs on each
    collated batch, in the worker (RT-DETR's batch multi-scale).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    if dist.is_available() and dist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=False)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_Collate(size_divisor, batch_transform),
        drop_last=drop_last,
        generator=generator,
        # workers restart every epoch so their seeds come from the per-epoch generator state:
        # a resumed run then sees exactly the augmentations an uninterrupted one would; and
        # they take a fresh copy of the dataset and collate, with the epoch set_epoch gave them
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    loader.base_seed = seed
    return loader


class _Collate:
    """Picklable collate with a fixed size divisor and an optional batch transform (worker
    processes need to pickle it)."""

    def __init__(
        self, size_divisor: int, batch_transform: Callable[[Batch], Batch] | None = None
    ) -> None:
        self.size_divisor = size_divisor
        self.batch_transform = batch_transform

    def __call__(self, samples: list) -> Batch:
        batch = collate_detection(samples, self.size_divisor)
        return batch if self.batch_transform is None else self.batch_transform(batch)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_transform, "set_epoch"):
            self.batch_transform.set_epoch(epoch)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Fix the order and worker seeds of `epoch` from the loader's seed alone, so that epoch e
    is the same whether or not the run was interrupted before it; and tell the augmentations
    that change with the epoch (the dataset's transform, the batch transform) which it is."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    for part in (loader.collate_fn, getattr(loader.dataset, "transforms", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(getattr(loader, "base_seed", 0) * 100_003 + epoch)
