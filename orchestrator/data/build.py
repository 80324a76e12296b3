"""Build the datasets of a spec (synthetic data is generated on first use)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.data.dataset import CocoDetection
from orchestrator.data.synth import ensure_shapes, split_paths
from orchestrator.data.transforms import eval_transforms, train_transforms
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
    train_tf = train_transforms(
        scales=data.train_scales,
        max_size=data.max_size,
        crop_resize=data.crop_resize if data.crop else None,
        crop_size=data.crop_size,
    )
    train = CocoDetection(*paths["train"], transforms=train_tf, verify_images=verify_images)
    val = CocoDetection(
        *paths["val"],
        transforms=eval_transforms(data.eval_size, data.max_size),
        verify_images=verify_images,
    )
    return train, val
