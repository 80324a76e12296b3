import math

import pytest
import torch
from torch import nn

from detr_models.batch import Batch
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
from orchestrator.training import engine
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
    assert {"loss", "loss_det", "lr", "images_per_s", "epoch_time", "loss_cls_s0"} <= set(first)
    assert math.isclose(first["loss_det"], first["loss"], rel_tol=1e-5)  # no distill_ terms
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


class ManyTermObjective(nn.Module):
    """A stand-in objective with `terms` loss terms from a linear model, the last third named
    `distill_*`; it keeps a detached copy of every step's terms for a naive re-summation.
    `skip_every`: drop `extra_term` on every step divisible by it (terms that come and go)."""

    def __init__(self, terms: int, skip_every: int = 0) -> None:
        super().__init__()
        self.names = [f"loss_t{k}" if k < 2 * terms // 3 else f"distill_t{k}" for k in range(terms)]
        self.skip_every = skip_every
        self.seen: list[dict[str, torch.Tensor]] = []

    def forward(self, model, batch, progress):
        out = model(batch.images.flatten(1))  # [B, 4]
        losses = {
            name: (out - 0.1 * k).pow(2).mean() / len(self.names)
            for k, name in enumerate(self.names)
        }
        if self.skip_every and progress.iteration % self.skip_every:
            losses["loss_extra"] = out.abs().mean()
        self.seen.append({k: v.detach().clone() for k, v in losses.items()})
        return losses, {"diag_constant": 2.0}

    def after_step(self) -> None:
        pass


def fake_batches(count: int, device: torch.device | str = "cpu", size: int = 2) -> list[Batch]:
    """`count` batches of `size` random 3x4x4 images; the engine only moves and counts them."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        images = torch.rand(size, 3, 4, 4, generator=generator)  # [B, 3, H, W]
        mask = torch.zeros(size, 4, 4, dtype=torch.bool)  # [B, H, W]
        batches.append(Batch(images, mask, [{} for _ in range(size)]).to(device))
    return batches


def _naive_means(seen: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Per-term epoch means by one float() per term per step, what the engine used to do."""
    sums: dict[str, float] = {}
    for step in seen:
        sums["loss"] = sums.get("loss", 0.0) + float(sum(step.values()))
        for key, value in step.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return {key: value / len(seen) for key, value in sums.items()}


def _count_host_transfers(monkeypatch) -> list[int]:
    calls = [0]
    to_host = engine._to_host

    def counting(values):
        calls[0] += 1
        return to_host(values)

    monkeypatch.setattr(engine, "_to_host", counting)
    return calls


@pytest.mark.parametrize(("terms", "iters", "log_every"), [(3, 5, 100), (30, 5, 100), (30, 5, 2)])
def test_loss_terms_cross_to_the_host_once_per_progress_line_whatever_their_number(
    monkeypatch, terms, iters, log_every
):
    torch.manual_seed(0)
    calls = _count_host_transfers(monkeypatch)
    model = nn.Linear(48, 4)
    objective = ManyTermObjective(terms)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    logs = []
    metrics = train_one_epoch(
        model,
        objective,
        fake_batches(iters),
        optimizer,
        None,
        torch.device("cpu"),
        0,
        1,
        log_every=log_every,
        log=logs.append,
    )
    assert len(logs) == (1 if log_every > iters else 3)  # iterations 2, 4 and the last
    assert calls[0] <= 1 + len(logs)  # the epoch end reuses the last line's transfer
    expected = _naive_means(objective.seen)
    for key, value in expected.items():
        assert math.isclose(metrics[key], value, rel_tol=1e-5), key
    detection = sum(value for key, value in expected.items() if key.startswith("loss_t"))
    assert math.isclose(metrics["loss_det"], detection, rel_tol=1e-5)
    assert metrics["loss_det"] < metrics["loss"]  # the distill_ terms are left out
    assert math.isclose(logs[-1]["loss"], metrics["loss"], rel_tol=1e-6)
    assert metrics["diag_constant"] == 2.0


def test_without_progress_lines_an_epoch_transfers_its_loss_sums_once(monkeypatch):
    calls = _count_host_transfers(monkeypatch)
    model = nn.Linear(48, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def no_sync(*args):
        raise AssertionError("a per-term host conversion in the training loop")

    # on a GPU each of these is a sync: the loop must not call them beside `_to_host`
    monkeypatch.setattr(torch.Tensor, "__float__", no_sync, raising=False)
    monkeypatch.setattr(torch.Tensor, "item", no_sync, raising=False)
    train_one_epoch(
        model, ManyTermObjective(30), fake_batches(4), optimizer, None, torch.device("cpu"), 0, 1
    )
    assert calls[0] == 1


def test_terms_missing_from_some_steps_count_as_zero_there():
    model = nn.Linear(48, 4)
    objective = ManyTermObjective(6, skip_every=2)  # loss_extra on odd iterations only
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    metrics = train_one_epoch(
        model, objective, fake_batches(5), optimizer, None, torch.device("cpu"), 0, 1
    )
    assert [("loss_extra" in step) for step in objective.seen] == [False, True, False, True, False]
    expected = _naive_means(objective.seen)  # loss_extra: its sum over all 5 iterations
    for key, value in expected.items():
        assert math.isclose(metrics[key], value, rel_tol=1e-5), key
    detection = sum(v for k, v in expected.items() if k != "loss" and not k.startswith("distill_"))
    assert math.isclose(metrics["loss_det"], detection, rel_tol=1e-5)
