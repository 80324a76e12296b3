"""The per-worker training loop. `train_worker` is what Ray Train's TorchTrainer runs; the loop
itself (`run_training`) is written against a small reporter interface so that Ray Train, Ray
Tune (for PBT) and tests run the same code."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from detr_models.build import build_model
from detr_models.criterion import SetCriterion
from detr_models.matcher import HungarianMatcher
from orchestrator.training import checkpoints
from orchestrator.data.build import build_datasets, data_paths
from orchestrator.data.dataset import CocoDetection
from orchestrator.spec.distill import detrdistill_section, od_detr_section
from orchestrator.evaluation.drawing import denormalize_image, draw_detections
from orchestrator.training.engine import (
    DetectionObjective,
    Objective,
    build_optimizer,
    build_scheduler,
    evaluate,
    train_one_epoch,
    unwrap,
)
from orchestrator.evaluation.coco import METRIC_NAMES, CocoEvaluator, format_metrics_table
from orchestrator.data.loader import build_loader, collate_detection, set_epoch
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.spec.loader import load_spec_dict
from orchestrator.evaluation.stability import MatchingStability, assignment_agreement
from orchestrator.data.transforms import eval_transforms

logger = logging.getLogger("detrdistill")
# Fault injection for testing resume: set in the driver's environment, the first attempt of
# a run crashes right after reporting this epoch.
FAULT_ENV = "DETRDISTILL_FAULT_AFTER_EPOCH"


class Reporter(Protocol):
    """What the loop needs from whoever runs it (Ray Train, Ray Tune, a test)."""

    rank: int

    def resume_dir(self) -> Path | None: ...

    def new_checkpoint_dir(self, epoch: int) -> Path: ...

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


class RayTrainReporter:
    """Reporter for a Ray Train worker, or (with `api=ray.tune`) for a Tune trial running the
    loop itself, as PBT needs. `owner` names the trial that writes the checkpoints: a checkpoint
    of another owner at resume means PBT copied it over (an exploit)."""

    def __init__(self, scratch: str | Path, api: Any = None, owner: str | None = None) -> None:
        import ray.train

        self._train = api or ray.train
        self.rank = ray.train.get_context().get_world_rank() if api is None else 0
        self.owner = owner
        self._dirs: list[tempfile.TemporaryDirectory] = []
        self.scratch = Path(scratch)
        self._written: list[Path] = []

    def resume_dir(self) -> Path | None:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            return None
        # as_directory may hand back a temporary copy that vanishes on exit: load inside it
        self._dirs.append(tempfile.TemporaryDirectory())
        with checkpoint.as_directory() as path:
            target = Path(self._dirs[-1].name)
            for item in Path(path).iterdir():
                (target / item.name).write_bytes(item.read_bytes())
        return target

    def new_checkpoint_dir(self, epoch: int) -> Path:
        # Ray copies a reported checkpoint into its storage, except in local mode
        # (num_workers=0) where it keeps our path: so keep the latest and drop older ones
        path = self.scratch / f"epoch_{epoch:04d}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    @property
    def last_checkpoint_dir(self) -> Path | None:
        """The checkpoint folder reported last (kept; older ones are removed)."""
        return self._written[-1] if self._written else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = (
            self._train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        )
        self._train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir is not None:
            for old in self._written:
                shutil.rmtree(old, ignore_errors=True)
            self._written = [checkpoint_dir]


def build_objective(
    spec: ExperimentSpec, num_classes: int, device: torch.device, model: nn.Module | None = None
) -> Objective:
    """The training objective of `spec.distill.method`. DETRDistill brings its frozen teacher;
    OD-DETR makes its EMA teacher from `model` (the bare student, already on `device`)."""
    m = spec.train.matcher
    matcher = HungarianMatcher(m.cost_class, m.cost_bbox, m.cost_giou)
    loss = spec.train.loss
    criterion = SetCriterion(
        num_classes, matcher, loss.cls, loss.bbox, loss.giou, stage_weights=loss.stage_weights
    )
    if spec.distill.method == "none":
        return DetectionObjective(criterion)
    offline = online = None
    if (section := detrdistill_section(spec.distill)) is not None:
        from distill.detrdistill import DETRDistill
        from orchestrator.training.model_source import load_model

        teacher_config = spec.teacher.model.to_model_config(num_classes)
        teacher, _ = load_model(spec.teacher.weights, teacher_config, spec.mlflow.tracking_uri)
        student_config = spec.student.to_model_config(num_classes)
        offline = DETRDistill(
            teacher.to(device),
            teacher_config,
            student_config,
            criterion,
            detrdistill_config(section),
        ).to(device)
    if (section := od_detr_section(spec.distill)) is not None:
        from distill.detrdistill import query_kind
        from distill.od_detr import ODDETR

        if model is None:
            raise ValueError("OD-DETR needs the student model to build its EMA teacher")
        anchors = query_kind(spec.student.to_model_config(num_classes)) == "anchor"
        online = ODDETR(model, criterion, od_detr_config(section), anchors).to(device)
    if offline is not None and online is not None:
        from distill.combined import CombinedDistill

        return CombinedDistill(offline, online)
    if offline is not None or online is not None:
        return offline or online
    raise ValueError(f"distill.method {spec.distill.method!r} is not available in this build")


def od_detr_config(section: Any) -> Any:
    """The spec's OD-DETR section as distill's plain config."""
    from distill.od_detr import MatchingConfig, ODDETRConfig
    from distill.schedules import Schedule

    match = section.matching
    return ODDETRConfig(
        decay=section.ema.decay,
        warmup=section.ema.warmup,
        matching=MatchingConfig(
            match.enabled,
            match.weight,
            match.classification == "quality_focal",
            Schedule(**match.schedule.model_dump()),
        ),
        initial_query=_term(section.initial_query),
        aux=_term(section.aux_groups),
        aux_per_gt=section.aux_groups.queries_per_gt,
        aux_pooled=section.aux_groups.grouping == "pooled",
    )


def _term(t: Any) -> Any:
    from distill.schedules import Schedule, TermConfig

    return TermConfig(
        t.enabled,
        t.weight,
        t.cls,
        t.bbox,
        t.giou,
        t.stage_weights,
        Schedule(**t.schedule.model_dump()),
    )


def detrdistill_config(section: Any) -> Any:
    """The spec's DETRDistill section as distill's plain config objects."""
    from distill.detrdistill import DETRDistillConfig, TermConfig
    from distill.schedules import Schedule

    c = section.contrastive
    contrastive = TermConfig(
        enabled=c.enabled, weight=c.weight, schedule=Schedule(**c.schedule.model_dump())
    )
    return DETRDistillConfig(
        _term(section.logits),
        _term(section.feature),
        _term(section.query_prior),
        section.last_teacher_stage,
        section.feature.top_k,
        section.feature.floor,
        contrastive,
        c.temperature,
    )


def _device(spec: ExperimentSpec) -> torch.device:
    if spec.scaling.use_gpu and torch.cuda.is_available():
        if dist.is_initialized():
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cuda")
    return torch.device("cpu")


def run_training(
    spec: ExperimentSpec,
    reporter: Reporter,
    logger_factory: Any = None,
    fault_after_epoch: int | None = None,
) -> dict[str, float]:
    """Train `spec.student` from scratch or from the reporter's resume checkpoint.

    Every epoch reports metrics (and a checkpoint written by rank 0). `logger_factory(run_id)`
    returns an MLflow RunLogger on rank 0 (None elsewhere or when tracking is off).
    """
    rank = reporter.rank
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = _device(spec)
    torch.manual_seed(spec.seed)
    train_set, val_set = build_datasets(spec.data)
    probe = _stability_probe(spec) if rank == 0 else None
    stability = MatchingStability(probe, "stability/") if probe else None
    m = spec.train.matcher
    probe_matcher = HungarianMatcher(m.cost_class, m.cost_bbox, m.cost_giou)
    num_classes = train_set.num_classes
    model_config = spec.student.to_model_config(num_classes)
    model = build_model(model_config).to(device)
    objective = build_objective(spec, num_classes, device, model)
    ema = getattr(objective, "ema_model", None)  # OD-DETR's EMA teacher, evaluated beside
    ema_stability = (
        MatchingStability(probe, "stability_ema/") if probe and ema is not None else None
    )
    loader = build_loader(train_set, spec.data.batch_size, True, spec.data.num_workers, spec.seed)
    val_loader = build_loader(
        val_set, spec.data.eval_batch_size or spec.data.batch_size, False, spec.data.num_workers
    )
    iters = (
        len(loader)
        if spec.train.max_iters_per_epoch is None
        else min(len(loader), spec.train.max_iters_per_epoch)
    )
    optim = spec.optim
    adapters = [objective] if isinstance(objective, nn.Module) else []
    optimizer = build_optimizer(
        model, optim.lr, optim.backbone_lr_mult, optim.weight_decay, optim.offset_lr_mult, adapters
    )
    scheduler = build_scheduler(
        optimizer,
        optim.schedule,
        iters,
        spec.train.epochs,
        optim.warmup_iters,
        optim.step_epochs,
        optim.gamma,
    )
    state: dict[str, Any] = {"epoch": 0, "history": {}, "best": None, "last_eval": {}}
    owner = getattr(reporter, "owner", None)
    exploited_from = None
    resume = reporter.resume_dir()
    if resume is not None:
        saved = checkpoints.load_training_state(resume)
        model.load_state_dict(saved["model"])
        if adapters and saved.get("objective") is not None:
            objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        checkpoints.set_rng_state(saved["rng"][min(rank, len(saved["rng"]) - 1)])
        state = {k: saved[k] for k in ("epoch", "history", "best", "last_eval")}
        donor = saved.get("owner")
        if owner is not None and donor not in (None, owner):
            exploited_from = donor
            if rank == 0:
                print(f"PBT exploit: continuing from trial {donor}'s checkpoint", flush=True)
        if stability is not None and saved.get("stability"):
            stability.load_state_dict(saved["stability"])
        if ema_stability is not None and saved.get("stability_ema"):
            ema_stability.load_state_dict(saved["stability_ema"])
        if rank == 0:
            print(f"resuming from the checkpoint after epoch {state['epoch']}", flush=True)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    run_logger = logger_factory() if (logger_factory is not None and rank == 0) else None
    if rank == 0:
        print(
            f"training {spec.student.architecture} on {world} worker(s), device {device}, "
            f"{torch.get_num_threads()} CPU threads per worker, {len(train_set)} train / "
            f"{len(val_set)} val images, {iters} iterations per epoch",
            flush=True,
        )
    evaluator = CocoEvaluator(val_set.coco, val_set.label_to_category)
    log = _print_progress if rank == 0 else None
    metrics: dict[str, float] = {}
    teacher = getattr(objective, "teacher_model", None)
    if teacher is not None and resume is None:
        # how good the teacher is on this validation set, once, so runs can be compared
        scores, _ = evaluate(teacher, val_loader, evaluator, device, amp=spec.train.amp)
        if rank == 0:
            print(format_metrics_table(scores, title="teacher on the validation set"), flush=True)
        if run_logger is not None:
            run_logger.metrics({f"teacher/{k}": scores[k] for k in METRIC_NAMES}, step=0)
    for epoch in range(state["epoch"], spec.train.epochs):
        set_epoch(loader, epoch)
        train_metrics = train_one_epoch(
            model,
            objective,
            loader,
            optimizer,
            scheduler,
            device,
            epoch,
            spec.train.epochs,
            optim.clip_grad_norm,
            spec.train.amp,
            spec.train.max_iters_per_epoch,
            spec.train.log_every,
            log,
        )
        metrics = {f"train/{k}": v for k, v in train_metrics.items()}
        last = epoch + 1 == spec.train.epochs
        evaluated = (epoch + 1) % spec.train.eval_interval == 0 or last
        if evaluated:
            keep = spec.mlflow.log_images if run_logger is not None else 0
            scores, samples = evaluate(
                model, val_loader, evaluator, device, amp=spec.train.amp, keep_images=keep
            )
            state["last_eval"] = {f"val/{k}": scores[k] for k in METRIC_NAMES}
            if rank == 0:
                print(
                    format_metrics_table(scores, title=f"epoch {epoch + 1} validation"), flush=True
                )
            if ema is not None:
                scores, _ = evaluate(ema, val_loader, evaluator, device, amp=spec.train.amp)
                state["last_eval"].update({f"val_ema/{k}": scores[k] for k in METRIC_NAMES})
                if rank == 0:
                    print(
                        format_metrics_table(scores, title=f"epoch {epoch + 1} EMA validation"),
                        flush=True,
                    )
            if run_logger is not None:
                _log_samples(run_logger, samples, val_set.class_names, epoch + 1)
        if stability is not None:  # every epoch: instability is change since the last epoch
            metrics.update(stability.measure(model, probe_matcher, device))
        if ema_stability is not None:
            metrics.update(ema_stability.measure(ema, probe_matcher, device))
            metrics["stability/teacher_agreement"] = assignment_agreement(
                stability.previous, ema_stability.previous
            )
        fresh = dict(metrics, **(state["last_eval"] if evaluated else {}), epoch=epoch + 1)
        if owner is not None:  # a Tune trial: 1 on the first report after a PBT exploit
            fresh["pbt/exploit"] = float(exploited_from is not None)
            exploited_from = None
        for key, value in fresh.items():
            state["history"].setdefault(key, []).append((epoch + 1, float(value)))
        if run_logger is not None:
            run_logger.metrics(fresh, step=epoch + 1)  # validation only where it was measured
        # Ray ranks checkpoints by the score metric: an epoch without evaluation reports the
        # worst score, so that only evaluated checkpoints compete (Ray keeps the latest anyway)
        metrics = dict(fresh)
        if not evaluated:
            worst = float("-inf") if spec.checkpoint.score_mode == "max" else float("inf")
            metrics[spec.checkpoint.score_metric] = worst
        ap = state["last_eval"].get("val/AP")
        if ap is not None and (state["best"] is None or ap > state["best"]):
            state["best"] = ap
        rngs = [checkpoints.rng_state()]
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        checkpoint_dir = None
        if rank == 0:
            checkpoint_dir = reporter.new_checkpoint_dir(epoch + 1)
            state["stability"] = stability.state_dict() if stability is not None else None
            state["owner"] = owner
            if ema_stability is not None:
                state["stability_ema"] = ema_stability.state_dict()
            _save_checkpoint(
                checkpoint_dir, model, objective, optimizer, scheduler, rngs, epoch + 1, state
            )
            extra = {
                "class_names": val_set.class_names,
                "label_to_category": val_set.label_to_category,
                "eval_size": spec.data.eval_size,
                "max_size": spec.data.max_size,
                "epoch": epoch + 1,
            }
            checkpoints.save_model_file(
                checkpoint_dir / checkpoints.MODEL_FILE, unwrap(model), model_config, extra
            )
            if ema is not None:
                checkpoints.save_model_file(
                    checkpoint_dir / checkpoints.EMA_MODEL_FILE, ema, model_config, extra
                )
        reporter.report(metrics, checkpoint_dir)
        if resume is None and fault_after_epoch == epoch + 1:
            raise RuntimeError(f"fault injected after epoch {epoch + 1} by ${FAULT_ENV}")
    return metrics


def _stability_probe(spec: ExperimentSpec) -> list:
    """The first training images, with the deterministic eval transform, in fixed batches
    (none when the probe is off)."""
    count = spec.train.stability_probe_images
    if count == 0:
        return []
    images, annotations = data_paths(spec.data)["train"]
    probe = CocoDetection(
        images, annotations, eval_transforms(spec.data.eval_size, spec.data.max_size)
    )
    size = spec.data.eval_batch_size or spec.data.batch_size
    indices = list(range(min(count, len(probe))))
    batches = [
        collate_detection([probe[i] for i in indices[s : s + size]])
        for s in range(0, len(indices), size)
    ]
    return batches


def _save_checkpoint(
    directory, model, objective, optimizer, scheduler, rngs, epoch: int, state: dict
) -> None:
    checkpoints.save_training_state(
        directory,
        {
            "model": unwrap(model).state_dict(),
            # distillation adapters (the teacher is never saved: its source is in the spec)
            "objective": objective.state_dict() if isinstance(objective, nn.Module) else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rngs,
            "epoch": epoch,
            "history": state["history"],
            "best": state["best"],
            "last_eval": state["last_eval"],
            "stability": state.get("stability"),
            "stability_ema": state.get("stability_ema"),
            "owner": state.get("owner"),
        },
    )


def _print_progress(info: dict[str, Any]) -> None:
    print(
        f"epoch {info['epoch'] + 1} iter {info['iteration']}/{info['total']}  loss {info['loss']:.4f}  "
        f"{info['images_per_s']:.1f} img/s  eta {info['eta_s']:.0f}s",
        flush=True,
    )


def _log_samples(run_logger: Any, samples: list[dict], class_names: list[str], epoch: int) -> None:
    for i, sample in enumerate(samples):
        target = sample["target"]
        height, width = target["size"].tolist()
        from torchvision.ops import box_convert

        gt = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor(
            [width, height, width, height]
        )
        pred = sample["prediction"]
        drawn = draw_detections(
            denormalize_image(sample["image"]),
            pred["boxes"],
            pred["labels"],
            pred["scores"],
            class_names=class_names,
            gt_boxes=gt,
            gt_labels=target["labels"],
        )
        run_logger.image(drawn.permute(1, 2, 0).numpy(), f"predictions/epoch_{epoch:03d}_{i}.png")


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` holds the resolved spec dict and the MLflow run."""
    spec = load_spec_dict(config["spec"], source="<worker>")
    reporter = RayTrainReporter(config["scratch_dir"])
    factory = None
    if config.get("mlflow_run_id"):
        from orchestrator.tracking import RunLogger

        def factory() -> RunLogger:
            return RunLogger(config["tracking_uri"], config["mlflow_run_id"])

    fault = config.get("fault_after_epoch")
    run_training(spec, reporter, factory, int(fault) if fault else None)
