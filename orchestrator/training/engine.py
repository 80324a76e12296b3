"""The epoch engine on plain PyTorch objects: `train_one_epoch` and `evaluate`, no Ray, no
MLflow, so tests and benchmarks call it directly. It speaks only the contracts below it: a
`Batch` (detr_models) and a `TrainingObjective` with its `Progress` (distill)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from detr_models.batch import Batch
from detr_models.build import unwrap
from detr_models.postprocess import PostProcess
from distill.objective import Progress, TrainingObjective
from orchestrator.errors import DIVERGED
from orchestrator.evaluation.coco import CocoEvaluator


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """False if the loss is not finite on any worker, so that every rank stops together."""
    bad = (~torch.isfinite(loss.detach())).float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad)


def _to_host(values: torch.Tensor) -> list[float]:
    """The one device-to-host transfer of the loss sums: a seam tests count calls to."""
    return values.tolist()


class _DeviceSums:
    """Running sums of named scalar loss tensors kept on their device: one stacked add per step
    and no host sync until `read`, so thirty loss terms cost one transfer per progress line, not
    thirty syncs per step. A name missing from a step adds zero to its sum."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.total: torch.Tensor | None = None  # [len(names)] float32, on the losses' device
        self._read_at = -1
        self._read: dict[str, float] = {}
        self._steps = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        terms = [value.detach().float() for value in values.values()]
        new = [name for name in values if name not in self.names]
        if new:
            self.names += new
            zeros = terms[0].new_zeros(len(new))
            self.total = zeros if self.total is None else torch.cat([self.total, zeros])
        if list(values) == self.names:
            self.total += torch.stack(terms)  # [terms]
        else:  # a step without some terms, or in another order: one add per term, still no sync
            for name, term in zip(values, terms, strict=True):
                self.total[self.names.index(name)] += term
        self._steps += 1

    def read(self) -> dict[str, float]:
        """The sums as Python floats, transferred once per step at most."""
        if self._read_at != self._steps:
            host = [] if self.total is None else _to_host(self.total)
            self._read = dict(zip(self.names, host, strict=True))
            self._read_at = self._steps
        return self._read


def _sync_objective_gradients(objective: TrainingObjective) -> None:
    """Average the gradients of an objective's own parameters (distillation adapters) over
    workers: they live outside the DDP-wrapped student, so DDP does not do it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for param in objective.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world


def train_one_epoch(
    model: nn.Module,
    objective: TrainingObjective,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    epoch: int,
    epochs: int,
    clip_grad_norm: float = 0.0,
    amp: bool = False,
    max_iters: int | None = None,
    log_every: int = 20,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """One pass over `loader`; returns the epoch means of every loss term and diagnostic, plus
    `loss` (the total), `loss_det` (the terms not named `distill_*`, comparable between a
    baseline and a distilled run), `lr`, `images_per_s` and `epoch_time`. `log` gets a progress
    dict every `log_every` iterations (epoch, iteration, total, loss, images/s, eta_s).

    Loss terms are summed on the device: the host syncs once per step for the finite check and
    once per progress line and epoch end for the sums (see `_to_host`)."""
    model.train()
    total_iters = len(loader) if max_iters is None else min(len(loader), max_iters)
    loss_sums = _DeviceSums()
    diagnostic_sums: dict[str, float] = {}
    device_diagnostics = _DeviceSums()  # diagnostics handed over as tensors: no sync per step
    images = 0
    start = time.perf_counter()
    use_amp = amp and device.type == "cuda"
    for iteration, batch in enumerate(loader):
        if iteration >= total_iters:
            break
        batch = batch.to(device, non_blocking=True)
        progress = Progress(epoch, iteration, total_iters, epochs)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            losses, diagnostics = objective(model, batch, progress)
        loss = sum(losses.values())
        if not _finite_everywhere(loss):
            bad = [f"{k}={v.item():.4g}" for k, v in losses.items() if not torch.isfinite(v)]
            raise FloatingPointError(
                f"{DIVERGED}: the loss is {loss.item()} at epoch {epoch + 1} iteration "
                f"{iteration + 1} of {total_iters} (non-finite terms: {', '.join(bad) or 'on another worker'})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _sync_objective_gradients(objective)
        if clip_grad_norm > 0:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        objective.after_step()
        images += len(batch)
        loss_sums.add({"loss": loss, **losses})
        on_device = {k: v for k, v in diagnostics.items() if torch.is_tensor(v)}
        if on_device:  # diagnostics the objective left on the device sum there too
            device_diagnostics.add(on_device)
        for key, value in diagnostics.items():
            if key not in on_device:
                diagnostic_sums[key] = diagnostic_sums.get(key, 0.0) + float(value)
        done = iteration + 1
        if log is not None and (done % log_every == 0 or done == total_iters):
            elapsed = time.perf_counter() - start
            log(
                {
                    "epoch": epoch,
                    "iteration": done,
                    "total": total_iters,
                    "loss": loss_sums.read()["loss"] / done,
                    "images_per_s": images / elapsed,
                    "eta_s": elapsed / done * (total_iters - done),
                }
            )
    elapsed = time.perf_counter() - start
    count = max(1, min(total_iters, len(loader)))
    metrics = {key: value / count for key, value in loss_sums.read().items()}
    if metrics:
        metrics["loss_det"] = sum(
            value
            for key, value in metrics.items()
            if key != "loss" and not key.startswith("distill_")
        )
    metrics.update({key: value / count for key, value in diagnostic_sums.items()})
    metrics.update({key: value / count for key, value in device_diagnostics.read().items()})
    metrics.update(
        lr=optimizer.param_groups[0]["lr"],
        images_per_s=images / max(elapsed, 1e-9),
        epoch_time=elapsed,
    )
    return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    evaluator: CocoEvaluator,
    device: torch.device,
    postprocess: PostProcess | None = None,
    amp: bool = False,
    keep_images: int = 0,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """COCO metrics of the model's last decoder stage over `loader`.

    Returns (metrics, samples) where samples are up to `keep_images` dicts with the normalised
    image, its predictions and targets, for drawing.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    postprocess = postprocess or PostProcess()
    evaluator.reset()
    samples: list[dict[str, Any]] = []
    use_amp = amp and device.type == "cuda"
    for batch in loader:
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(batch.images, batch.pixel_mask)
        predictions = postprocess.predictions_for_evaluator(
            out.logits[-1].float(), out.boxes[-1].float(), batch.targets
        )
        evaluator.update(
            [{k: v.cpu() if torch.is_tensor(v) else v for k, v in p.items()} for p in predictions]
        )
        for i in range(min(len(batch), keep_images - len(samples))):
            samples.append(
                _sample(batch, i, out.logits[-1][i].float(), out.boxes[-1][i].float(), postprocess)
            )
    model.train(was_training)
    return evaluator.compute(), samples


def _sample(
    batch: Batch, i: int, logits: torch.Tensor, boxes: torch.Tensor, post: PostProcess
) -> dict:
    """One image cropped to its valid region with predictions in that image's pixels."""
    target = batch.targets[i]
    height, width = target["size"].tolist()
    size = torch.tensor([[height, width]], device=logits.device)
    (pred,) = post(logits[None], boxes[None], size)
    return {
        "image": batch.images[i, :, :height, :width].cpu(),
        "prediction": {k: v.cpu() for k, v in pred.items()},
        "target": {k: v.cpu() if torch.is_tensor(v) else v for k, v in target.items()},
    }
