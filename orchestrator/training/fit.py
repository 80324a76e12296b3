"""The fit loop: train a spec's student epoch by epoch, evaluate, measure matching stability,
checkpoint and report. Written against the small `Reporter` interface so that Ray Train, Ray
Tune (PBT) and a plain process (`LocalReporter`) run the same code; no Ray here."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from detr_models.build import unwrap
from orchestrator.console import show_progress
from orchestrator.data.loader import set_epoch
from orchestrator.evaluation.coco import METRIC_NAMES, format_metrics_table
from orchestrator.evaluation.mosaic import sample_mosaic
from orchestrator.evaluation.pr_curve import per_class_markdown, per_class_table, pr_curve_figure
from orchestrator.evaluation.stability import assignment_agreement
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.training import checkpoints
from orchestrator.training.assemble import TrainingSetup, assemble
from orchestrator.training.engine import evaluate, train_one_epoch
from orchestrator.training.reporters import Reporter
from orchestrator.training.state import TrainingState, save_training_checkpoint

logger = logging.getLogger("detrdistill")
# Fault injection for testing resume: set in the driver's environment, the first attempt of
# a run fails right after reporting epoch N: "N" raises an error, "kill:N" SIGKILLs the worker
FAULT_ENV = "DETRDISTILL_FAULT_AFTER_EPOCH"


def default_device(spec: ExperimentSpec) -> torch.device:
    """CUDA when the spec asks for a GPU and one is there, else the CPU."""
    return torch.device("cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu")


def run_training(
    spec: ExperimentSpec,
    reporter: Reporter,
    logger_factory: Callable[[], Any] | None = None,
    fault: Callable[[int], None] | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Train `spec.student` from scratch or from the reporter's resume checkpoint.

    Every epoch reports metrics (and a checkpoint written by rank 0). `logger_factory()`
    returns an MLflow RunLogger on rank 0 (None elsewhere or when tracking is off).
    """
    rank = reporter.rank
    world = dist.get_world_size() if dist.is_initialized() else 1
    setup = assemble(spec, device or default_device(spec), rank)
    state, exploited_from, resumed = _resume(setup, reporter)
    model: nn.Module = setup.model
    if world > 1:
        index = [setup.device.index] if setup.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=index)
    run_logger = logger_factory() if (logger_factory is not None and rank == 0) else None
    params_m = sum(p.numel() for p in unwrap(model).parameters()) / 1e6
    if rank == 0:
        logger.info(
            f"training {spec.student.architecture} ({params_m:.2f} M parameters) on {world} "
            f"worker(s), device {setup.device}, {torch.get_num_threads()} CPU threads per "
            f"worker, {len(setup.train_set)} train / {len(setup.val_set)} val images, "
            f"{setup.iters_per_epoch} iterations per epoch"
        )
    monitor = None
    if run_logger is not None:
        monitor = run_logger.system_metrics(resumed)
        if not resumed:  # once per run: step 0 is never "logged already"
            run_logger.metrics({"model/params_M": params_m}, step=0)
    try:
        return _epochs(setup, model, state, reporter, run_logger, fault, exploited_from, world)
    finally:
        if monitor is not None:
            monitor.finish()


def _epochs(
    setup: TrainingSetup,
    model: nn.Module,
    state: TrainingState,
    reporter: Reporter,
    run_logger: Any,
    fault: Callable[[int], None] | None,
    exploited_from: str | None,
    world: int,
) -> dict[str, float]:
    """The epochs from `state.epoch` on (the teacher's score first, on a fresh run)."""
    spec, rank = setup.spec, reporter.rank
    teacher = setup.objective.teacher_model
    if teacher is not None and state.epoch == 0:
        # how good the teacher is on this validation set, once, so runs can be compared
        scores, _ = evaluate(
            teacher, setup.val_loader, setup.evaluator, setup.device, amp=spec.train.amp
        )
        if rank == 0:
            logger.info(f"teacher on the validation set: {score_line(scores)}")
        if run_logger is not None:
            run_logger.metrics({f"teacher/{k}": scores[k] for k in METRIC_NAMES}, step=0)
    progress = _progress(spec, state.epoch) if rank == 0 else None
    metrics: dict[str, float] = {}
    for epoch in range(state.epoch, spec.train.epochs):
        set_epoch(setup.loader, epoch)
        train_metrics = train_one_epoch(
            model,
            setup.objective,
            setup.loader,
            setup.optimizer,
            setup.scheduler,
            setup.device,
            epoch=epoch,
            epochs=spec.train.epochs,
            clip_grad_norm=spec.optim.clip_grad_norm,
            amp=spec.train.amp,
            max_iters=spec.train.max_iters_per_epoch,
            log_every=spec.train.log_every,
            log=progress,
        )
        metrics = epoch_metric_names(train_metrics)
        evaluated = (epoch + 1) % spec.train.eval_interval == 0 or epoch + 1 == spec.train.epochs
        if evaluated:
            _validate(setup, model, state, epoch, run_logger)
        metrics.update(_stability(setup, model))
        fresh = dict(metrics, **(state.last_eval if evaluated else {}), epoch=epoch + 1)
        if reporter.owner is not None:  # a Tune trial: 1 on the first report after a PBT exploit
            fresh["pbt/exploit"] = float(exploited_from is not None)
            exploited_from = None
        state.epoch = epoch + 1
        state.record(fresh, epoch + 1)
        if evaluated and state.best is not None:
            fresh["best/val_AP"] = state.best
        if run_logger is not None:
            run_logger.metrics(fresh, step=epoch + 1)  # validation only where it was measured
        # Ray ranks checkpoints by the score metric: an epoch without evaluation reports the
        # worst score, so that only evaluated checkpoints compete (Ray keeps the latest anyway)
        metrics = dict(fresh)
        if not evaluated:
            worst = float("-inf") if spec.checkpoint.score_mode == "max" else float("inf")
            metrics[spec.checkpoint.score_metric] = worst
        checkpoint_dir = _checkpoint(setup, model, state, reporter, world)
        reporter.report(metrics, checkpoint_dir)
        if fault is not None:
            fault(epoch + 1)
    return metrics


def fault_injector(fault: str, marker: Path | None = None) -> Callable[[int], None]:
    """The `fault` hook of $DETRDISTILL_FAULT_AFTER_EPOCH: after epoch N raise ("N") or
    SIGKILL this process ("kill:N"), once: with `marker`, only while that file is absent."""
    kill, _, when = fault.rpartition(":")

    def inject(epoch: int) -> None:
        if epoch != int(when) or (marker is not None and marker.exists()):
            return
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        if kill == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"fault injected after epoch {epoch} by ${FAULT_ENV}")

    return inject


def _resume(setup: TrainingSetup, reporter: Reporter) -> tuple[TrainingState, str | None, bool]:
    """(state, the PBT donor trial if the checkpoint came from another trial, resumed?)."""
    state = TrainingState(owner=reporter.owner)
    folder = reporter.resume_dir()
    if folder is None:
        return state, None, False
    saved = checkpoints.load_training_state(folder)
    setup.model.load_state_dict(saved["model"])
    if saved.get("objective"):
        setup.objective.load_state_dict(saved["objective"])
    setup.optimizer.load_state_dict(saved["optimizer"])
    setup.scheduler.load_state_dict(saved["scheduler"])
    rank = reporter.rank
    checkpoints.set_rng_state(saved["rng"][min(rank, len(saved["rng"]) - 1)])
    state = TrainingState.from_saved(saved)
    donor, state.owner = state.owner, reporter.owner
    exploited_from = (
        donor if reporter.owner is not None and donor not in (None, reporter.owner) else None
    )
    if setup.stability is not None and state.stability:
        setup.stability.load_state_dict(state.stability)
    if setup.ema_stability is not None and state.stability_ema:
        setup.ema_stability.load_state_dict(state.stability_ema)
    if rank == 0:
        if exploited_from is not None:
            logger.info(f"PBT exploit: continuing from trial {exploited_from}'s checkpoint")
        logger.info(f"resuming from the checkpoint after epoch {state.epoch}")
    return state, exploited_from, True


def _validate(
    setup: TrainingSetup, model: nn.Module, state: TrainingState, epoch: int, run_logger: Any
) -> None:
    """COCO AP of the student (and the EMA teacher) into `state.last_eval`: one line per
    evaluation, the full table at the last epoch; the sample mosaic as a step image."""
    spec = setup.spec
    final = epoch + 1 == spec.train.epochs
    keep = spec.mlflow.log_images if run_logger is not None else 0
    scores, samples = evaluate(
        model, setup.val_loader, setup.evaluator, setup.device, amp=spec.train.amp, keep_images=keep
    )
    details = setup.evaluator.last_details
    state.last_eval = {f"val/{k}": scores[k] for k in METRIC_NAMES}
    shown = logger.info if setup.rank == 0 else logger.debug
    line = f"epoch {epoch + 1}/{spec.train.epochs} validation: {score_line(scores)}"
    tables = [format_metrics_table(scores, title=f"final validation (epoch {epoch + 1})")]
    ema = setup.objective.ema_model
    if ema is not None:
        ema_scores, _ = evaluate(
            ema, setup.val_loader, setup.evaluator, setup.device, amp=spec.train.amp
        )
        state.last_eval.update({f"val_ema/{k}": ema_scores[k] for k in METRIC_NAMES})
        line += f"  |  EMA teacher: {score_line(ema_scores)}"
        tables.append(format_metrics_table(ema_scores, title="final EMA teacher validation"))
    best = max(state.best if state.best is not None else -1.0, scores["AP"])
    shown(f"{line}  (best AP {best:.3f})")
    if final:
        shown("\n".join(tables))
    if run_logger is None:
        return
    names = setup.val_set.class_names
    if samples:
        run_logger.step_image(sample_mosaic(samples, names), "predictions", step=epoch + 1)
    if final:  # where the model ended: precision-recall and AP per class
        figure = pr_curve_figure(details, names)
        if figure is not None:
            run_logger.figure(figure, "evaluation/pr_curve.png")
        run_logger.table(per_class_table(details, names), "evaluation/per_class_ap.json")
        run_logger.text(per_class_markdown(details, names), "evaluation/per_class_ap.md")


def _stability(setup: TrainingSetup, model: nn.Module) -> dict[str, float]:
    """Matching instability of the student (and EMA) since the last epoch, on rank 0."""
    metrics: dict[str, float] = {}
    if setup.stability is not None:  # every epoch: instability is change since the last epoch
        metrics.update(setup.stability.measure(model, setup.probe_matcher, setup.device))
    if setup.ema_stability is not None:
        ema = setup.objective.ema_model
        metrics.update(setup.ema_stability.measure(ema, setup.probe_matcher, setup.device))
        metrics["stability/teacher_agreement"] = assignment_agreement(
            setup.stability.previous, setup.ema_stability.previous
        )
    return metrics


def _checkpoint(
    setup: TrainingSetup, model: nn.Module, state: TrainingState, reporter: Reporter, world: int
) -> Any:
    """Rank 0 writes the resume state and the plain model files; every rank gives its RNG."""
    rngs = [checkpoints.rng_state()]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if reporter.rank != 0:
        return None
    directory = reporter.new_checkpoint_dir(state.epoch)
    if setup.stability is not None:
        state.stability = setup.stability.state_dict()
    if setup.ema_stability is not None:
        state.stability_ema = setup.ema_stability.state_dict()
    save_training_checkpoint(
        directory, model, setup.objective, setup.optimizer, setup.scheduler, rngs, state
    )
    spec, val_set = setup.spec, setup.val_set
    square = spec.data.augment == "rtdetr"  # evaluates on rtdetr.size squares
    extra = {
        "class_names": val_set.class_names,
        "label_to_category": val_set.label_to_category,
        "eval_size": spec.data.rtdetr.size if square else spec.data.eval_size,
        "max_size": spec.data.max_size,
        "eval_square": square,
        "epoch": state.epoch,
    }
    config = setup.model_config
    checkpoints.save_model_file(directory / checkpoints.MODEL_FILE, unwrap(model), config, extra)
    ema = setup.objective.ema_model
    if ema is not None:
        checkpoints.save_model_file(directory / checkpoints.EMA_MODEL_FILE, ema, config, extra)
    return directory


def epoch_metric_names(train_metrics: dict[str, float]) -> dict[str, float]:
    """The engine's epoch means under their chart groups: distillation terms (`distill_*`)
    under `distill/`, the rest (losses, lr, speed) under `train/`."""
    return {
        f"distill/{k[len('distill_') :]}" if k.startswith("distill_") else f"train/{k}": v
        for k, v in train_metrics.items()
    }


def score_line(scores: dict[str, float]) -> str:
    """`AP 0.412  AP50 0.633  AP75 0.437` (what one evaluation prints)."""
    return "  ".join(f"{k} {scores[k]:.3f}" for k in ("AP", "AP50", "AP75") if k in scores)


def _progress(spec: ExperimentSpec, first_epoch: int) -> Callable[[dict[str, Any]], None]:
    """The engine's progress reports as the console's live line, with the run's ETA from the
    time per epoch so far (validation included)."""
    started = time.monotonic()

    def report(info: dict[str, Any]) -> None:
        fraction = info["iteration"] / max(1, info["total"])
        done = info["epoch"] - first_epoch + fraction
        left = spec.train.epochs - info["epoch"] - fraction
        elapsed = time.monotonic() - started
        show_progress(
            dict(
                info,
                run=spec.name,
                epoch=info["epoch"] + 1,
                epochs=spec.train.epochs,
                run_eta_s=elapsed / done * left if done > 0 else 0.0,
            )
        )

    return report
