"""`detrdistill data check`: open a dataset the way training does, report what is in it, and
evaluate its ground truth through the real transform and evaluation path.

Ground truth fed back as predictions must score AP = 1.0; anything lower means boxes are lost
or distorted between the json and the evaluator (a broken category mapping, a resize bug, ...),
which is far cheaper to learn here than after a training run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.ops import box_convert

from orchestrator.data.dataset import CocoDetection
from orchestrator.data.transforms import eval_transforms
from orchestrator.evaluation.coco import CocoEvaluator
from orchestrator.evaluation.drawing import denormalize_image, save_detections_png

logger = logging.getLogger("detrdistill")


@dataclass
class DatasetSummary:
    """Counts that tell whether a dataset is what the user thinks it is."""

    images: int
    empty_images: int
    boxes: int
    crowd_boxes: int
    dropped_boxes: int
    classes: list[str]

    def format(self) -> str:
        rows = [
            ("images", self.images),
            ("images without boxes", self.empty_images),
            ("training boxes", self.boxes),
            ("crowd boxes (eval only)", self.crowd_boxes),
            ("dropped degenerate boxes", self.dropped_boxes),
            ("classes", f"{len(self.classes)}: {', '.join(self.classes)}"),
        ]
        return "\n".join(f"  {name:<26}{value}" for name, value in rows)


def summarize(dataset: CocoDetection) -> DatasetSummary:
    """Count images, boxes and classes of an opened dataset."""
    counts = [len(dataset.raw_target(i)[1]) for i in range(len(dataset))]
    crowd = sum(1 for ann in dataset.coco.dataset["annotations"] if ann.get("iscrowd", 0))
    return DatasetSummary(
        images=len(dataset),
        empty_images=sum(1 for c in counts if c == 0),
        boxes=sum(counts),
        crowd_boxes=crowd,
        dropped_boxes=dataset.num_dropped,
        classes=dataset.class_names,
    )


def targets_to_predictions(target: dict) -> dict:
    """A target as a perfect prediction: pixel xyxy in the original image, score 1."""
    height, width = target["orig_size"].tolist()
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = box_convert(target["boxes"], "cxcywh", "xyxy") * scale  # [N,4]
    return {
        "image_id": target["image_id"],
        "boxes": boxes,
        "scores": torch.ones(len(boxes)),
        "labels": target["labels"],
    }


def evaluate_ground_truth(
    dataset: CocoDetection, draw_dir: Path | None = None, draw_count: int = 8
) -> dict[str, float]:
    """Run every target through the transform and the evaluator as a perfect prediction."""
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_category)
    start = time.monotonic()
    last_print = start
    for index in range(len(dataset)):
        image, target = dataset[index]
        evaluator.update([targets_to_predictions(target)])
        if draw_dir is not None and index < draw_count:
            height, width = target["size"].tolist()
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            boxes = box_convert(target["boxes"], "cxcywh", "xyxy") * scale
            save_detections_png(
                draw_dir / f"{target['image_id']}.png",
                denormalize_image(image),
                boxes,
                target["labels"],
                torch.ones(len(boxes)),
                class_names=dataset.class_names,
            )
        now = time.monotonic()
        if now - last_print > 2.0 or index + 1 == len(dataset):
            last_print = now
            logger.info(
                f"  checked {index + 1}/{len(dataset)} images ({time.monotonic() - start:.1f}s)"
            )
    return evaluator.compute()


def open_for_check(images: Path, annotations: Path, size: int, max_size: int) -> CocoDetection:
    """Open with full image verification and the deterministic eval transform; a file that
    fails to decode is reported, not skipped."""
    return CocoDetection(
        images,
        annotations,
        transforms=eval_transforms(size, max_size),
        verify_images=True,
        skip_broken=False,
    )
