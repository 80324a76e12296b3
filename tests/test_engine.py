import math

import torch

from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.criterion import SetCriterion
from detr_models.matcher import HungarianMatcher
from distill.objective import DetectionObjective
from orchestrator.data.dataset import CocoDetection
from orchestrator.data.loader import build_loader
from orchestrator.data.synth import ensure_shapes, split_paths
from orchestrator.data.transforms import eval_transforms
from orchestrator.evaluation.coco import METRIC_NAMES, CocoEvaluator
from orchestrator.training.engine import evaluate, train_one_epoch
from orchestrator.training.optim import build_optimizer, build_scheduler


def _setup(tmp_path_factory, count=8):
    root = ensure_shapes(
        tmp_path_factory.getbasetemp() / "shapes-cache",
        num_train=8,
        num_val=4,
        image_size=128,
        seed=0,
    )
    dataset = CocoDetection(*split_paths(root, "train"), transforms=eval_transforms(128, 256))
    dataset.images = dataset.images[:count]
    dataset.image_ids = dataset.image_ids[:count]
    return dataset


def test_training_epochs_lower_the_loss_and_evaluate_returns_metrics(tmp_path_factory):
    torch.manual_seed(0)
    dataset = _setup(tmp_path_factory)
    model = build_model(tiny_config("detr", num_classes=dataset.num_classes))
    objective = DetectionObjective(SetCriterion(dataset.num_classes, HungarianMatcher()))
    loader = build_loader(dataset, 4, train=True, seed=0)
    optimizer = build_optimizer(model, 1e-3, 0.1, 1e-4)
    logs = []
    first = train_one_epoch(
        model,
        objective,
        loader,
        optimizer,
        None,
        torch.device("cpu"),
        0,
        20,
        clip_grad_norm=0.1,
        log_every=1,
        log=logs.append,
    )
    for epoch in range(1, 15):
        last = train_one_epoch(
            model, objective, loader, optimizer, None, torch.device("cpu"), epoch, 20, 0.1
        )
    assert last["loss"] < 0.75 * first["loss"]
    assert {"loss", "lr", "images_per_s", "epoch_time", "loss_cls_s0", "loss_giou_s1"} <= set(first)
    assert [entry["iteration"] for entry in logs] == [1, 2] and logs[-1]["eta_s"] == 0
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_category)
    metrics, samples = evaluate(
        model, build_loader(dataset, 4, train=False), evaluator, torch.device("cpu"), keep_images=3
    )
    assert set(metrics) == set(METRIC_NAMES) and 0 <= metrics["AP50"] <= 1
    assert evaluator.num_images == 8
    assert len(samples) == 3 and samples[0]["image"].shape[0] == 3
    assert model.training  # evaluate restores the mode


def test_optimizer_groups_and_schedules():
    model = build_model(tiny_config("detr"))
    optimizer = build_optimizer(model, 1e-3, 0.1, 1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-4]
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    assert sum(p.numel() for p in optimizer.param_groups[1]["params"]) == n_backbone
    step = build_scheduler(
        optimizer, "step", iters_per_epoch=10, epochs=5, warmup_iters=4, step_epochs=[3]
    )
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step.step()
    assert math.isclose(lrs[0], 1e-3 / 4) and math.isclose(lrs[3], 1e-3)
    assert math.isclose(lrs[29], 1e-3) and math.isclose(lrs[30], 1e-4)
    optimizer = build_optimizer(model, 1e-3, 0.0, 1e-4)
    assert len(optimizer.param_groups) == 1  # backbone multiplier 0 freezes it
    cosine = build_scheduler(optimizer, "cosine", iters_per_epoch=10, epochs=1)
    for _ in range(5):
        optimizer.step()
        cosine.step()
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.5e-3, rel_tol=1e-6)
