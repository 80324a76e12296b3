"""A spec's Hugging Face teacher (`teacher: {hf: ...}`): found (local folder or the Hub), loaded
through distill's adapter, mapped onto the dataset's classes, and checked against what the
distillation terms need, with errors that name the spec field and the teacher class."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from distill.config import detrdistill_part
from distill.hf_teacher import HfTeacher, TeacherUnavailable, input_normalisation, load_hf_model
from distill.hf_teacher import term_needs as needs_of
from orchestrator.errors import UserInputError
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.training.hub_source import hub_folder
from orchestrator.training.teacher_classes import teacher_class_match

logger = logging.getLogger("detrdistill")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def teacher_folder(source: str) -> Path:
    """The local model folder of `teacher.hf` (a Hub id is downloaded once, then cached)."""
    if Path(source).is_dir():
        return Path(source)
    hub = source.removeprefix("hf:")
    if HUB_ID.fullmatch(hub):
        try:
            return hub_folder(f"hf:{hub}")
        except UserInputError as err:
            raise UserInputError(
                f"teacher.hf: {source}: no such folder ({Path(source).absolute()}), and the Hub "
                f"gives nothing either ({err})"
            ) from None
    raise UserInputError(
        f"teacher.hf: {source} is neither a model folder nor a Hub id; give a folder written by "
        "save_pretrained (config.json + *.safetensors) or <org>/<name>[@revision]"
    )


def load_hf_teacher(
    spec: ExperimentSpec, class_names: list[str], report: bool = False
) -> HfTeacher:
    """The frozen adapter, its logits over `class_names`; `report` logs the classes without a
    teacher counterpart (once, by the driver)."""
    folder = teacher_folder(spec.teacher.hf)
    try:
        model, family = load_hf_model(folder)
        teacher = HfTeacher(
            model, family, input_normalisation(folder, family), spec.teacher.precision
        )
    except TeacherUnavailable as err:
        raise UserInputError(f"teacher.hf: {err}") from None
    profile = teacher.profile
    index = teacher_class_match(profile.class_names, class_names, spec.teacher.classes)
    teacher.map_classes(index)
    missing = [name for name, i in zip(class_names, index or [], strict=False) if i is None]
    if report:
        logger.info(f"teacher: {profile.class_name} from {folder}")
        if missing:
            logger.warning(
                f"teacher: no {profile.class_name} class for {missing}; these get no logits "
                "distillation (map synonyms in teacher.classes)"
            )
    check_terms(spec, teacher)
    return teacher


def check_terms(spec: ExperimentSpec, teacher: HfTeacher) -> None:
    """Every enabled DETRDistill term can run with this teacher, or a UserInputError naming the
    term, the teacher class and what is missing."""
    part = detrdistill_part(spec.distill)
    if part is None:
        return
    profile = teacher.profile
    where = "distill.detrdistill" if spec.distill.method != "detrdistill" else "distill"
    for term, need in needs_of(part).items():
        if need not in profile.provides:
            raise UserInputError(
                f"{where}.{term}: the teacher {profile.class_name} does not provide {need}; set "
                f"{where}.{term}.enabled: false (the other terms still run)"
            )
    if part.feature.enabled:
        student, strides = spec.student.feature_strides, profile.feature_strides
        if not set(student) & set(strides):
            raise UserInputError(
                f"{where}.feature: the student's feature levels (strides {student}) share no "
                f"stride with the teacher {profile.class_name}'s ({strides}); give the student a "
                f"common level or set {where}.feature.enabled: false"
            )
    weights = part.feature.stage_weights
    if (
        part.feature.enabled
        and isinstance(weights, list)
        and len(weights) != profile.decoder_layers
    ):
        raise UserInputError(
            f"{where}.feature.stage_weights: {len(weights)} weights, but the teacher "
            f"{profile.class_name} has {profile.decoder_layers} decoder stages"
        )
