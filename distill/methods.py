"""The methods table: `build_objective` turns a distill config into its training objective, a
plain dict of builders by method name (like `detr_models.build.BUILDERS`), no registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from detr_models.config import ModelConfig
from detr_models.criterion import SetCriterion
from distill.combined import CombinedDistill
from distill.config import CombinedConfig, DETRDistillConfig, NoDistillConfig, ODDETRConfig
from distill.detrdistill import DETRDistill
from distill.ema import EmaTeacher
from distill.hf_teacher import TeacherProfile
from distill.objective import DetectionObjective, TrainingObjective
from distill.od_detr import ODDETR


@dataclass
class Student:
    """The bare student (not DDP-wrapped), already on its device, with its config."""

    model: nn.Module
    config: ModelConfig


@dataclass
class Teacher:
    """A trained, frozen detector (already on the student's device) with its config, or the
    `TeacherProfile` of a Hugging Face one; `classes`: the dataset classes it has a counterpart
    for (None: all)."""

    model: nn.Module
    config: ModelConfig | TeacherProfile
    classes: list[int] | None = None


def _none(
    config: NoDistillConfig, criterion: SetCriterion, student: Student, teacher
) -> TrainingObjective:
    ema = config.ema
    if ema is None:
        return DetectionObjective(criterion)
    averaged = EmaTeacher(student.model, ema.decay, ema.warmup)
    return DetectionObjective(criterion, averaged, student.model)


def _detrdistill(
    config: DETRDistillConfig, criterion: SetCriterion, student: Student, teacher: Teacher
) -> DETRDistill:
    return DETRDistill(
        teacher.model, teacher.config, student.config, criterion, config, teacher.classes
    )


def _od_detr(config: ODDETRConfig, criterion: SetCriterion, student: Student, teacher) -> ODDETR:
    return ODDETR(student.model, criterion, config, student.config.query_kind == "anchor")


def _combined(
    config: CombinedConfig, criterion: SetCriterion, student: Student, teacher: Teacher
) -> CombinedDistill:
    offline = _detrdistill(config.detrdistill, criterion, student, teacher)
    return CombinedDistill(offline, _od_detr(config.od_detr, criterion, student, None))


METHODS: dict[str, Callable[..., TrainingObjective]] = {
    "none": _none,
    "detrdistill": _detrdistill,
    "od_detr": _od_detr,
    "detrdistill+od_detr": _combined,
}


def build_objective(
    config: NoDistillConfig | DETRDistillConfig | ODDETRConfig | CombinedConfig,
    criterion: SetCriterion,
    student: Student,
    teacher: Teacher | None = None,
) -> TrainingObjective:
    """The objective of `config.method`, on the student's device. DETRDistill brings the frozen
    teacher; OD-DETR makes its EMA teacher from the student."""
    if config.needs_teacher and teacher is None:
        raise ValueError(f"distill.method {config.method!r} needs a teacher")
    device = next(student.model.parameters()).device
    return METHODS[config.method](config, criterion, student, teacher).to(device)
