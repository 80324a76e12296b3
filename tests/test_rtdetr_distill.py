"""Distillation with an RT-DETRv2 student: every method through the real training loop
(`train_local`: assemble, engine, evaluation, checkpoints; no Ray), the distillation groups
apart from the denoising queries, heterogeneous teacher/student pairs, and the specs refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench.local_training import train_local
from detr_models.build import build_model
from detr_models.config import LossConfig, MatcherConfig, ModelConfig, tiny_config
from detr_models.criterion import build_criterion, total
from distill.config import CombinedConfig, DETRDistillConfig
from distill.methods import Student, Teacher, build_objective
from distill.objective import Progress
from orchestrator.errors import UserInputError
from orchestrator.launch.run import preflight
from orchestrator.spec.loader import load_spec_dict
from orchestrator.spec.problems import SpecError
from orchestrator.training import checkpoints
from tests.overfit import shapes_batch

PROGRESS = Progress(epoch=0, iteration=0, iters_per_epoch=1, epochs=1)
LEVELS = ["C3", "C4", "C5"]

# the quickstart RT-DETRv2 student (experiments/quickstart_rtdetr_student.yaml), fewer queries
RTDETR_STUDENT = {
    "architecture": "rtdetr_v2",
    "backbone": "tiny",
    "tiny_width": 8,
    "levels": LEVELS,
    "hidden_dim": 32,
    "num_heads": 4,
    "encoder_layers": 1,
    "encoder_ffn_dim": 64,
    "decoder_layers": 2,
    "ffn_dim": 64,
    "num_queries": 10,
    "num_denoising": 10,
    "dropout": 0.0,
}
DINO = {
    "num_feature_levels": 4,
    "box_refine": True,
    "two_stage": True,
    "two_stage_queries": "mixed",
    "look_forward_twice": True,
    "num_denoising": 10,
}
DETECTION = [f"loss_{t}_s{k}" for t in ("cls", "bbox", "giou") for k in (0, 1)]
DENOISING = [f"dn_{name}" for name in DETECTION]
ENCODER = ["enc_loss_cls_s0", "enc_loss_bbox_s0", "enc_loss_giou_s0"]
DETRDISTILL_TERMS = ["distill_logits_cls_s0", "distill_feature_s1", "distill_prior_loss_cls_s1"]
OD_DETR_TERMS = ["distill_match_bbox_s1", "distill_init_cls_s0", "distill_aux_s1_loss_giou_s1"]


def _rtdetr(**overrides) -> ModelConfig:
    options = {k: v for k, v in RTDETR_STUDENT.items() if k != "architecture"}
    return tiny_config("rtdetr_v2", **{**options, **overrides})


def _deformable(**overrides) -> ModelConfig:
    options = {"levels": LEVELS, "box_refine": True, "tiny_width": 8, "num_queries": 10}
    return tiny_config("deformable_detr", **{**options, **overrides})


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> tuple[ModelConfig, Path]:
    """A freshly built Deformable DETR (width 64, box refinement) in a product model file."""
    torch.manual_seed(0)
    config = _deformable()
    folder = tmp_path_factory.mktemp("teacher")
    return config, checkpoints.save_model_file(folder / "teacher.pt", build_model(config), config)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    _, batch = shapes_batch(tmp_path_factory.getbasetemp() / "shapes-cache", count=2, size=64)
    return batch


def _criterion():
    loss = LossConfig(classification="varifocal", cls=1.0)
    return build_criterion(3, MatcherConfig(), loss)


# ----------------------------------------------------------------------------- the real loop
# method -> (distill section, distillation terms it logs, whether it keeps an EMA)
METHODS = {
    "none": ({"method": "none", "ema": {"decay": 0.9}}, [], True),
    "detrdistill": ({"method": "detrdistill"}, DETRDISTILL_TERMS, False),
    "od_detr": ({"method": "od_detr", "ema": {"decay": 0.9}}, OD_DETR_TERMS, True),
    "detrdistill+od_detr": (
        {"method": "detrdistill+od_detr", "od_detr": {"ema": {"decay": 0.9}}},
        DETRDISTILL_TERMS + OD_DETR_TERMS,
        True,
    ),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_an_rtdetr_student_through_the_loop(
    method, tmp_path, tiny_spec, teacher_file
):
    distill, terms, has_ema = METHODS[method]
    overrides = {
        "student": RTDETR_STUDENT,
        "train.max_iters_per_epoch": 2,
        "train.stability_probe_images": 0,
        "train.loss": {"classification": "varifocal", "cls": 1.0},
    }
    if method.startswith("detrdistill"):
        config, weights = teacher_file
        overrides["teacher"] = {"model": config.model_dump(mode="json"), "weights": str(weights)}
    spec = tiny_spec(tmp_path, epochs=1, register_as=None, distill=distill, **overrides)
    reporter = train_local(spec, tmp_path / "out")

    (last,) = reporter.history
    assert last["epoch"] == 1
    # detection terms under train/, distillation terms under distill/ (charts grouped by kind)
    logged = {k.removeprefix("train/") for k in last if k.startswith("train/")}
    logged |= {"distill_" + k.removeprefix("distill/") for k in last if k.startswith("distill/")}
    assert set(DETECTION + DENOISING + ENCODER + terms) <= logged
    assert not any(k.startswith("train/distill") for k in last)
    if method == "none":
        assert not any(k.startswith("distill") for k in logged)
    assert [k for k, v in last.items() if not math.isfinite(v)] == []  # AP: -1 when n/a
    assert last["train/loss"] > 0
    assert ("val_ema/AP" in last) == has_ema and "val/AP" in last
    # the checkpoint holds the student (and the EMA, where there is one), as RT-DETR configs
    folder = reporter.last_checkpoint
    student = checkpoints.read_model_file(folder / checkpoints.MODEL_FILE)
    assert student["config"]["architecture"] == "rtdetr_v2"
    assert (folder / checkpoints.EMA_MODEL_FILE).is_file() == has_ema
    # the EMA took one update per optimiser step; DETRDistill's adapters are kept, its teacher not
    objective = checkpoints.load_training_state(folder)["objective"]
    updates = [int(v) for k, v in objective.items() if k.endswith("ema.updates")]
    assert updates == ([2] if has_ema else [])
    assert any("feature_adapters" in k for k in objective) == method.startswith("detrdistill")
    assert not any("teacher" in k for k in objective)


# ----------------------------------------------------------------------------- denoising apart
STUDENTS = {
    "rtdetr_v2": _rtdetr,
    "dino": lambda: _deformable(hidden_dim=32, **DINO),
}


@pytest.mark.parametrize("student_kind", list(STUDENTS))
def test_distillation_groups_never_hold_the_denoising_queries(student_kind, batch):
    torch.manual_seed(0)
    t_cfg, s_cfg = _deformable(), STUDENTS[student_kind]()
    teacher, student = build_model(t_cfg), build_model(s_cfg).train()
    objective = build_objective(
        CombinedConfig(), _criterion(), Student(student, s_cfg), Teacher(teacher, t_cfg)
    )
    state, groups = objective.prepare(batch, PROGRESS)
    names = [g.name for g in groups]
    assert names == ["query_prior", "od_init", "od_aux_s0", "od_aux_s1"]
    with_dn = student(batch.images, batch.pixel_mask, groups, targets=batch.targets)
    without = student(batch.images, batch.pixel_mask, groups)
    assert without.denoising is None and with_dn.denoising is not None
    assert list(with_dn.groups) == names  # the denoising outputs are not a group
    assert with_dn.denoising.logits.shape[2] == with_dn.denoising_group.num_denoising
    assert with_dn.logits.shape[2] == s_cfg.num_queries
    for group in groups:
        assert with_dn.groups[group.name].logits.shape[2] == group.content.shape[-2]
    # every distillation term (and OD-DETR's matching loss) is the same with or without them
    for part in (objective.distill_losses, objective.main_losses):
        terms_dn, _ = part(with_dn, state, batch)
        terms, _ = part(without, state, batch)
        assert set(terms_dn) == set(terms) and not any(k.startswith("dn_") for k in terms)
        for key, value in terms.items():
            torch.testing.assert_close(terms_dn[key], value, rtol=1e-4, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------- mixed pairs
PAIRS = {
    "rtdetr_to_narrower_rtdetr": (lambda: _rtdetr(hidden_dim=64), lambda: _rtdetr()),
    "deformable_to_rtdetr": (_deformable, _rtdetr),
    "rtdetr_to_deformable": (lambda: _rtdetr(hidden_dim=64), lambda: _deformable(hidden_dim=32)),
    "deformable_to_dino": (_deformable, lambda: _deformable(hidden_dim=32, **DINO)),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_detrdistill_pairs_train_every_student_and_adapter_parameter(pair, batch):
    torch.manual_seed(0)
    t_cfg, s_cfg = (make() for make in PAIRS[pair])
    teacher, student = build_model(t_cfg), build_model(s_cfg).train()
    objective = build_objective(
        DETRDistillConfig(), _criterion(), Student(student, s_cfg), Teacher(teacher, t_cfg)
    )
    losses, _ = objective(student, batch, PROGRESS)
    loss = total(losses)
    assert torch.isfinite(loss)
    assert all(any(k.startswith(p) for k in losses) for p in DETRDISTILL_TERMS)
    denoises = getattr(s_cfg, "num_denoising", 0) > 0
    assert any(k.startswith("dn_") for k in losses) == denoises
    loss.backward()
    missing = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    adapters = dict(objective.named_parameters())
    assert adapters  # the pairs differ in width or query kind: something translates
    assert [n for n, p in adapters.items() if p.grad is None] == []
    assert all(
        torch.isfinite(p.grad).all()
        for p in [*student.parameters(), *adapters.values()]
        if p.grad is not None
    )
    assert all(p.grad is None for p in teacher.parameters())


# ----------------------------------------------------------------------------- refused specs
@pytest.mark.parametrize("architecture", ["detr", "conditional_detr"])
def test_denoising_on_a_student_without_it_is_refused(architecture, tmp_path, tiny_spec_dict):
    data = tiny_spec_dict(
        tmp_path, **{"student.architecture": architecture, "student.num_denoising": 10}
    )
    with pytest.raises(SpecError, match=r"^student\.num_denoising: unknown field; allowed: "):
        load_spec_dict(data)


def test_denoising_on_deformable_detr_needs_anchor_queries(tmp_path, tiny_spec_dict):
    student = {"architecture": "deformable_detr", "levels": LEVELS, "num_denoising": 10}
    data = tiny_spec_dict(tmp_path, student=student)
    with pytest.raises(SpecError, match=r"^student: num_denoising: contrastive denoising needs"):
        load_spec_dict(data)


def test_class_count_mismatches_are_refused_before_training(tmp_path, tiny_spec):
    # a 5-class RT-DETRv2 teacher whose file names no classes, for the 3-class shapes
    config = _rtdetr(hidden_dim=64, num_classes=5)
    weights = checkpoints.save_model_file(tmp_path / "teacher.pt", build_model(config), config)
    teacher = {"model": config.model_dump(mode="json"), "weights": str(weights)}
    distill = {"method": "detrdistill"}
    spec = tiny_spec(
        tmp_path, register_as=None, student=RTDETR_STUDENT, teacher=teacher, distill=distill
    )
    with pytest.raises(UserInputError, match=r"^teacher: 5 classes against the dataset's 3, and"):
        preflight(spec)
    student = {**RTDETR_STUDENT, "num_classes": 5}
    spec = tiny_spec(tmp_path, register_as=None, student=student, teacher=teacher, distill=distill)
    with pytest.raises(UserInputError, match=r"student\.num_classes: 5 but the dataset has 3"):
        preflight(spec)
