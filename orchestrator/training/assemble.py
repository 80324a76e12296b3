"""The composition root of a run: from a spec to the datasets, loaders, student, teacher,
objective, optimiser, scheduler and stability probes the fit loop drives."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from detr_models.batch import Batch
from detr_models.build import build_model
from detr_models.class_subset import restrict_classes
from detr_models.config import ModelConfig
from detr_models.criterion import build_criterion
from detr_models.matcher import HungarianMatcher
from distill.methods import Student, Teacher, build_objective
from distill.objective import TrainingObjective
from orchestrator.data.build import (
    build_datasets,
    data_paths,
    eval_transform,
    train_batch_transform,
)
from orchestrator.data.dataset import CocoDetection
from orchestrator.data.loader import build_loader, collate_detection
from orchestrator.evaluation.coco import CocoEvaluator
from orchestrator.evaluation.stability import MatchingStability
from orchestrator.spec.sections import ExperimentSpec, HfTeacherSpec
from orchestrator.training.hf_teacher_source import load_hf_teacher
from orchestrator.training.model_source import init_weights, load_model
from orchestrator.training.optim import build_optimizer, build_scheduler
from orchestrator.training.teacher_classes import teacher_class_index

logger = logging.getLogger("detrdistill")


@dataclass
class TrainingSetup:
    """Everything one worker trains with (the model is bare: the fit loop wraps it in DDP)."""

    spec: ExperimentSpec
    device: torch.device
    rank: int
    train_set: CocoDetection
    val_set: CocoDetection
    loader: DataLoader
    val_loader: DataLoader
    iters_per_epoch: int
    model_config: ModelConfig
    model: nn.Module
    objective: TrainingObjective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    evaluator: CocoEvaluator
    probe_matcher: HungarianMatcher
    stability: MatchingStability | None  # rank 0 only, when the probe is on
    ema_stability: MatchingStability | None


def assemble(spec: ExperimentSpec, device: torch.device, rank: int = 0) -> TrainingSetup:
    """Build a run's parts on `device` (seeded by the spec)."""
    torch.manual_seed(spec.seed)
    train_set, val_set = build_datasets(spec.data)
    num_classes = train_set.num_classes
    model_config = spec.student.with_classes(num_classes)
    model = build_model(model_config)
    if model_config.weights:
        fresh = init_weights(model, model_config.weights, spec.mlflow.tracking_uri)
        if rank == 0:
            logger.info(
                f"student starts from {model_config.weights}"
                + (f" (class heads start fresh: {len(fresh)} tensors)" if fresh else "")
            )
    model = model.to(device)
    criterion = build_criterion(num_classes, spec.train.matcher, spec.train.loss)
    objective = build_objective(
        spec.distill,
        criterion,
        Student(model, model_config),
        load_teacher(spec, train_set.class_names, device),
    )
    data = spec.data
    loader = build_loader(
        train_set,
        data.batch_size,
        True,
        data.num_workers,
        spec.seed,
        batch_transform=train_batch_transform(data),
    )
    val_loader = build_loader(
        val_set, data.eval_batch_size or data.batch_size, False, data.num_workers
    )
    iters = len(loader)
    if spec.train.max_iters_per_epoch is not None:
        iters = min(iters, spec.train.max_iters_per_epoch)
    optim = spec.optim
    optimizer = build_optimizer(
        model,
        lr=optim.lr,
        backbone_lr_mult=optim.backbone_lr_mult,
        weight_decay=optim.weight_decay,
        offset_lr_mult=optim.offset_lr_mult,
        extra_modules=[objective],
    )
    scheduler = build_scheduler(
        optimizer,
        schedule=optim.schedule,
        iters_per_epoch=iters,
        epochs=spec.train.epochs,
        warmup_iters=optim.warmup_iters,
        step_epochs=optim.step_epochs,
        gamma=optim.gamma,
    )
    probe = stability_probe(spec) if rank == 0 else []
    stability = MatchingStability(probe, "stability/") if probe else None
    has_ema = probe and objective.ema_model is not None
    return TrainingSetup(
        spec=spec,
        device=device,
        rank=rank,
        train_set=train_set,
        val_set=val_set,
        loader=loader,
        val_loader=val_loader,
        iters_per_epoch=iters,
        model_config=model_config,
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        evaluator=CocoEvaluator(val_set.coco, val_set.label_to_category),
        probe_matcher=HungarianMatcher(**spec.train.matcher.model_dump()),
        stability=stability,
        ema_stability=MatchingStability(probe, "stability_ema/") if has_ema else None,
    )


def load_teacher(
    spec: ExperimentSpec, class_names: list[str], device: torch.device
) -> Teacher | None:
    """The spec's frozen teacher on `device`, restricted to the dataset's classes (by name or
    `teacher.class_map`) when it has others, or None when the method needs none."""
    if spec.teacher is None or not spec.distill.needs_teacher:
        return None
    if isinstance(spec.teacher, HfTeacherSpec):
        adapter = load_hf_teacher(spec, class_names)
        return Teacher(adapter.to(device), adapter.profile, adapter.covered)
    model, config = load_teacher_model(spec, class_names)
    return Teacher(model.to(device), config)


def load_teacher_model(spec: ExperimentSpec, class_names: list[str]) -> tuple[nn.Module, Any]:
    """(the teacher model with the dataset's classes, its config) from the spec."""
    config = spec.teacher.model.with_classes(len(class_names))
    model, payload = load_model(spec.teacher.weights, config, spec.mlflow.tracking_uri)
    index = teacher_class_index(
        payload["extra"].get("class_names"),
        config.num_classes,
        class_names,
        spec.teacher.class_map,
    )
    if index is not None:
        restrict_classes(model, index)
        config = config.model_copy(update={"num_classes": len(index)})
    return model, config


def stability_probe(spec: ExperimentSpec) -> list[Batch]:
    """The first training images, with the deterministic eval transform, in fixed batches
    (none when the probe is off)."""
    count = spec.train.stability_probe_images
    if count == 0:
        return []
    images, annotations = data_paths(spec.data)["train"]
    probe = CocoDetection(images, annotations, eval_transform(spec.data))
    size = spec.data.eval_batch_size or spec.data.batch_size
    indices = list(range(min(count, len(probe))))
    return [
        collate_detection([probe[i] for i in indices[s : s + size]])
        for s in range(0, len(indices), size)
    ]
