"""Rules that span sections of a spec (teacher present, stage-weight lengths, EMA export,
common feature levels): each problem is a (dotted path, message) pair for the loader to
place on its YAML line."""

from __future__ import annotations

from distill.config import detrdistill_part, od_detr_part
from orchestrator.spec.sections import ExperimentSpec, TeacherSpec

Problems = list[tuple[str, str]]


def cross_section_problems(spec: ExperimentSpec) -> Problems:
    """Every rule that spans sections; empty when the spec is consistent."""
    problems = []
    if spec.distill.needs_teacher and spec.teacher is None:
        problems.append(
            (
                "teacher",
                f"distill.method {spec.distill.method!r} needs a teacher; add a 'teacher' section",
            )
        )
    problems += _od_detr_stage_problems(spec) + _detrdistill_problems(spec)
    problems += _ema_problems(spec)
    if getattr(spec.student, "class_head", "sigmoid") == "softmax":
        problems.append(
            (
                "student.class_head",
                "softmax (K + no-object) is for imported DETR checkpoints used as teachers or "
                "with eval/predict; a student trains with the sigmoid head: remove the field",
            )
        )
    stages = spec.train.loss.stage_weights
    if stages is not None and len(stages) != spec.student.decoder_layers:
        problems.append(
            (
                "train.loss.stage_weights",
                f"has {len(stages)} entries but the student has {spec.student.decoder_layers} "
                "decoder layers; give one weight per stage",
            )
        )
    return problems


def _ema_problems(spec: ExperimentSpec) -> Problems:
    if od_detr_part(spec.distill) is not None or getattr(spec.distill, "ema", None):
        return []
    problems = []
    if spec.checkpoint.export == "ema":
        problems.append(
            (
                "checkpoint.export",
                "is 'ema' but this run has no EMA model; set distill.ema (method none), use "
                "distill.method od_detr (or detrdistill+od_detr), or export 'student'",
            )
        )
    if spec.checkpoint.score_metric.startswith("val_ema/"):
        problems.append(
            (
                "checkpoint.score_metric",
                f"{spec.checkpoint.score_metric!r} needs an EMA model (distill.method "
                "od_detr); score by 'val/AP' instead",
            )
        )
    return problems


def _where(spec: ExperimentSpec, part: object, name: str) -> str:
    # field paths of a combined section sit under distill.<name>
    return "distill" if part is spec.distill else f"distill.{name}"


def _stage_list_problems(
    where: str, term: str, weights: object, count: int, owner: str
) -> Problems:
    if isinstance(weights, list) and len(weights) != count:
        return [
            (
                f"{where}.{term}.stage_weights",
                f"has {len(weights)} entries but the {owner} has {count} decoder stages",
            )
        ]
    return []


def _od_detr_stage_problems(spec: ExperimentSpec) -> Problems:
    part = od_detr_part(spec.distill)
    if part is None:
        return []
    where = _where(spec, part, "od_detr")
    stages = spec.student.decoder_layers
    problems = []
    for term in ("initial_query", "aux_groups"):
        weights = getattr(part, term).stage_weights
        problems += _stage_list_problems(where, term, weights, stages, "student")
    return problems


def _detrdistill_problems(spec: ExperimentSpec) -> Problems:
    part = detrdistill_part(spec.distill)
    if part is None or not isinstance(spec.teacher, TeacherSpec):
        return []  # a Hugging Face teacher's levels and stages are checked when it loads
    where = _where(spec, part, "detrdistill")
    problems = []
    if part.feature.enabled:
        student = spec.student.feature_strides
        teacher = spec.teacher.model.feature_strides
        if not set(student) & set(teacher):
            problems.append(
                (
                    f"{where}.feature",
                    f"the student's feature levels (strides {student}) share no stride with the "
                    f"teacher's ({teacher}), so feature distillation cannot run; give them a common "
                    "level or set distill.feature.enabled: false (logits and query_prior still run)",
                )
            )
    counts = {
        "logits": (spec.student.decoder_layers, "student"),
        "feature": (spec.teacher.model.decoder_layers, "teacher"),
        "query_prior": (spec.student.decoder_layers, "student"),
    }
    for term, (count, owner) in counts.items():
        weights = getattr(part, term).stage_weights
        problems += _stage_list_problems(where, term, weights, count, owner)
    return problems
