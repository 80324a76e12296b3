"""Build the datasets of a spec (synthetic data is generated on first use)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.data.dataset import CocoDetection
from orchestrator.data.rtdetr_transforms import BatchMultiScale, rtdetr_train_transforms
from orchestrator.data.synth import ensure_shapes, split_paths
from orchestrator.data.transforms import DetectionTransform, eval_transforms, train_transforms
from orchestrator.spec.sections import DataSpec, SyntheticData


def data_paths(data: DataSpec) -> dict[str, tuple[Path, Path]]:
    """(images folder, annotation file) per split; generates the synthetic set if needed."""
    source = data.source
    if isinstance(source, SyntheticData):
        root = ensure_shapes(
            source.cache_dir,
            num_train=source.train_images,
            num_val=source.val_images,
            image_size=source.image_size,
            seed=source.seed,
            num_classes=source.classes,
            max_objects=source.max_objects,
            distractors=source.distractors,
            occlusion=source.occlusion,
            textured=source.textured,
            small_objects=source.small_objects,
        )
        return {split: split_paths(root, split) for split in ("train", "val")}
    return {
        "train": (Path(source.train_images), Path(source.train_annotations)),
        "val": (Path(source.val_images), Path(source.val_annotations)),
    }


def build_datasets(
    data: DataSpec, verify_images: bool = False
) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) datasets with the spec's transforms; `verify_images` opens every image's
    header first (a missing, foreign or mis-sized file is an error before training starts)."""
    paths = data_paths(data)
    train = CocoDetection(
        *paths["train"], transforms=train_transform(data), verify_images=verify_images
    )
    val = CocoDetection(*paths["val"], transforms=eval_transform(data), verify_images=verify_images)
    return train, val


def train_transform(data: DataSpec) -> DetectionTransform:
    """The per-image training transform of `data.augment`."""
    if data.augment == "rtdetr":
        rt = data.rtdetr
        return rtdetr_train_transforms(
            size=rt.size,
            photometric_p=rt.photometric_p,
            zoom_out_p=rt.zoom_out_p,
            iou_crop_p=rt.iou_crop_p,
            flip_p=rt.flip_p,
            stop_epoch=rt.stop_epoch,
        )
    return train_transforms(
        scales=data.train_scales,
        max_size=data.max_size,
        crop_resize=data.crop_resize if data.crop else None,
        crop_size=data.crop_size,
    )


def eval_transform(data: DataSpec) -> DetectionTransform:
    """The deterministic evaluation transform: shorter side `eval_size` (detr) or a
    `rtdetr.size` square (rtdetr)."""
    if data.augment == "rtdetr":
        return eval_transforms(data.rtdetr.size, square=True)
    return eval_transforms(data.eval_size, data.max_size)


def train_batch_transform(data: DataSpec) -> BatchMultiScale | None:
    """What the training loader does to each collated batch: RT-DETR's multi-scale, or nothing."""
    if data.augment != "rtdetr" or not data.rtdetr.scales:
        return None
    return BatchMultiScale(data.rtdetr.scales, data.rtdetr.stop_epoch)
