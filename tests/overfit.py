"""A minimal overfit loop for learning tests: a few synthetic images, full batch, tiny model."""

from __future__ import annotations

from pathlib import Path

import torch

from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.criterion import SetCriterion, total
from detr_models.matcher import HungarianMatcher
from detr_models.postprocess import PostProcess
from distill.objective import DetectionObjective, Progress
from orchestrator.data.dataset import CocoDetection
from orchestrator.data.loader import collate_detection
from orchestrator.data.synth import ensure_shapes, split_paths
from orchestrator.data.transforms import eval_transforms
from orchestrator.evaluation.coco import CocoEvaluator


def shapes_batch(cache: Path, count: int, size: int = 128):
    """The first `count` training images of a small synthetic set, as one padded batch."""
    root = ensure_shapes(cache, num_train=max(count, 8), num_val=4, image_size=size, seed=0)
    dataset = CocoDetection(*split_paths(root, "train"), transforms=eval_transforms(size, size * 2))
    return dataset, collate_detection([dataset[i] for i in range(count)])


def overfit(
    arch: str,
    cache: Path,
    count: int = 4,
    steps: int = 300,
    lr: float = 1e-3,
    criterion_options: dict | None = None,
    **overrides,
):
    """Train a tiny model on `count` images for `steps` full-batch steps with the product's
    plain detection objective (encoder proposals and denoising included where the model has
    them); return (AP50, losses)."""
    torch.manual_seed(0)
    dataset, batch = shapes_batch(cache, count)
    model = build_model(tiny_config(arch, num_classes=dataset.num_classes, **overrides))
    criterion = SetCriterion(dataset.num_classes, HungarianMatcher(), **(criterion_options or {}))
    objective = DetectionObjective(criterion)
    progress = Progress(0, 0, steps, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    history = []
    model.train()
    for _ in range(steps):
        losses, _ = objective(model, batch, progress)
        loss = total(losses)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(loss.item())
    model.eval()
    with torch.no_grad():
        out = model(batch.images, batch.pixel_mask)
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_category)
    post = PostProcess(top_k=100)
    evaluator.update(post.predictions_for_evaluator(out.logits[-1], out.boxes[-1], batch.targets))
    return evaluator.compute()["AP50"], history
