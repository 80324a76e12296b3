import copy

import pytest
import torch

from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.criterion import SetCriterion, total
from detr_models.matcher import HungarianMatcher
from distill.config import ContrastiveConfig, DETRDistillConfig
from distill.detrdistill import DETRDistill
from distill.objective import Progress
from distill.schedules import Schedule, map_stages, stage_weights
from orchestrator.launch.export import ExportedDetector
from orchestrator.training.optim import build_optimizer
from tests.overfit import shapes_batch

PROGRESS = Progress(epoch=0, iteration=0, iters_per_epoch=1, epochs=1)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    _, batch = shapes_batch(tmp_path_factory.getbasetemp() / "shapes-cache", count=2)
    return batch


def _objective(teacher, t_cfg, s_cfg, config=None):
    criterion = SetCriterion(3, HungarianMatcher())
    return DETRDistill(teacher, t_cfg, s_cfg, criterion, config or DETRDistillConfig())


def test_teacher_equal_to_student_gives_zero_distillation(batch):
    torch.manual_seed(0)
    cfg = tiny_config("detr", levels=["C4", "C5"])
    teacher = build_model(cfg)
    student = copy.deepcopy(teacher)
    objective = _objective(teacher, cfg, cfg)
    losses, diagnostics = objective(student, batch, PROGRESS)
    logits = {k: v.item() for k, v in losses.items() if k.startswith("distill_logits")}
    assert len(logits) == 3 * 2
    for key, value in logits.items():
        # boxes: the target is the teacher box clamped to the image, so only the parts of
        # predicted boxes that stick out of the image remain
        assert abs(value) < (1e-5 if "cls" in key else 2e-2), key
    features = [v.item() for k, v in losses.items() if k.startswith("distill_feature")]
    assert len(features) == 2 and max(features) == 0.0
    # the teacher's queries in the student's decoder, with the teacher's own assignment, give
    # exactly the teacher's own detection loss (weights 2/5/2)
    with torch.no_grad():
        t_out = teacher(batch.images, batch.pixel_mask)
        own, _ = SetCriterion(3, HungarianMatcher())(t_out, batch.targets)
    prior = sum(v.item() for k, v in losses.items() if k.startswith("distill_prior_"))
    assert prior == pytest.approx(total(own).item(), rel=1e-4)
    assert 0 < diagnostics["distill_feature_mask_mean"] <= 1
    assert 0 < diagnostics["distill_teacher_score"] < 1


def test_teacher_is_frozen_and_untouched_by_a_step(batch):
    torch.manual_seed(0)
    t_cfg = tiny_config("detr")
    s_cfg = tiny_config("detr", hidden_dim=32, num_heads=4)
    teacher = build_model(t_cfg)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_model(s_cfg)
    objective = _objective(teacher, t_cfg, s_cfg)
    optimizer = build_optimizer(student, 1e-3, 0.1, 1e-4, extra_modules=[objective])
    assert not any(
        p is q for g in optimizer.param_groups for p in g["params"] for q in teacher.parameters()
    )
    losses, _ = objective(student, batch, PROGRESS)
    total(losses).backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    assert "teacher" not in "".join(objective.state_dict())  # never checkpointed


PAIRS = {
    "fewer_student_stages": (
        tiny_config("detr", decoder_layers=3),
        tiny_config("detr", decoder_layers=2),
    ),
    "narrower_student": (tiny_config("detr"), tiny_config("detr", hidden_dim=32)),
    "more_student_queries": (tiny_config("detr"), tiny_config("detr", num_queries=24)),
    "fewer_student_queries": (tiny_config("detr"), tiny_config("detr", num_queries=10)),
    "deformable_to_conditional": (
        tiny_config("deformable_detr", levels=["C3", "C4", "C5"], box_refine=True),
        tiny_config("conditional_detr", hidden_dim=32),
    ),
    "dab_to_detr": (tiny_config("dab_detr"), tiny_config("detr")),
    "detr_to_two_stage": (
        tiny_config("detr", levels=["C3", "C4", "C5"]),
        tiny_config("deformable_detr", levels=["C3", "C4", "C5"], two_stage=True, box_refine=True),
    ),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_mismatched_pairs_train(pair, batch):
    torch.manual_seed(0)
    t_cfg, s_cfg = PAIRS[pair]
    teacher, student = build_model(t_cfg), build_model(s_cfg)
    objective = _objective(teacher, t_cfg, s_cfg)
    optimizer = build_optimizer(student, 1e-3, 0.1, 1e-4, extra_modules=[objective])
    adapters = {k: v.clone() for k, v in objective.state_dict().items()}
    history = []
    for _ in range(4):
        losses, _ = objective(student, batch, PROGRESS)
        loss = total(losses)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    prefixes = {k.split("_s")[0] for k in losses if k.startswith("distill_")}
    assert {"distill_logits_cls", "distill_feature", "distill_prior_loss_cls"} <= prefixes
    assert len([k for k in losses if k.startswith("distill_logits_cls")]) == s_cfg.decoder_layers
    assert len([k for k in losses if k.startswith("distill_feature")]) == t_cfg.decoder_layers
    assert history[-1] < history[0]
    changed = [k for k, v in objective.state_dict().items() if not torch.equal(v, adapters[k])]
    assert changed or not adapters  # adapters, where the pair needs them, are trained


def test_query_prior_group_is_training_only(batch):
    torch.manual_seed(0)
    cfg = tiny_config("dab_detr")
    teacher, student = build_model(cfg), build_model(tiny_config("dab_detr", hidden_dim=32))
    objective = _objective(teacher, cfg, tiny_config("dab_detr", hidden_dim=32))
    losses, _ = objective(student, batch, PROGRESS)
    total(losses).backward()
    student.eval()
    with torch.no_grad():
        plain = student(batch.images, batch.pixel_mask)
        with_group = student(
            batch.images, batch.pixel_mask, [objective.query_translator(teacher(batch.images))]
        )
        exported = ExportedDetector(student, {})(batch.images)
        alone = student(batch.images)
    assert torch.allclose(plain.logits, with_group.logits, atol=1e-5)
    assert torch.equal(exported, torch.cat((alone.boxes[-1], alone.logits[-1].sigmoid()), -1))
    assert not any(
        "query" in name for name, _ in student.named_parameters() if "translator" in name
    )


def test_feature_levels_must_share_a_stride():
    t_cfg = tiny_config("detr", levels=["C5"])
    s_cfg = tiny_config("detr", levels=["C4"])
    with pytest.raises(ValueError, match=r"distill\.feature: student levels \(strides \[16\]\)"):
        _objective(build_model(t_cfg), t_cfg, s_cfg)
    assert tiny_config("deformable_detr", levels=["C3", "C4", "C5"]).feature_strides == [
        8,
        16,
        32,
        64,
    ]


def test_schedules_stage_rules_and_mapping():
    assert map_stages(3, 6) == [1, 3, 5] and map_stages(6, 3) == [0, 0, 1, 1, 2, 2]
    assert map_stages(2, 2) == [0, 1] and map_stages(1, 6) == [5]
    assert stage_weights("last_only", 3) == [0, 0, 1] and stage_weights("increasing", 2) == [0.5, 1]
    with pytest.raises(ValueError, match="one entry per stage"):
        stage_weights([1, 2], 3)
    assert Schedule(kind="warmup", warmup_epochs=4)(1.0, 0.1) == 0.25
    assert (
        Schedule(kind="step", start_epoch=2)(1.9, 0.1) == 0
        and Schedule(kind="step", start_epoch=2)(2, 0.2) == 1
    )
    assert Schedule(kind="cosine")(0, 0.5) == pytest.approx(0.5)


def test_contrastive_term_is_optional_and_prefers_the_matching_query(batch):
    from distill.contrastive import contrastive_query_loss

    g = torch.Generator().manual_seed(0)
    teacher_hidden = torch.randn(2, 6, 8, generator=g)
    aligned = contrastive_query_loss(
        teacher_hidden + 0.01 * torch.randn(2, 6, 8, generator=g), teacher_hidden
    )
    shuffled = contrastive_query_loss(
        teacher_hidden[:, torch.randperm(6, generator=g)], teacher_hidden
    )
    assert aligned < 0.1 < shuffled
    cfg = tiny_config("detr")
    teacher, student = build_model(cfg), build_model(tiny_config("detr", hidden_dim=32))
    off, _ = _objective(teacher, cfg, tiny_config("detr", hidden_dim=32))(student, batch, PROGRESS)
    assert "distill_contrastive" not in off
    config = DETRDistillConfig(contrastive=ContrastiveConfig(enabled=True, weight=0.2))
    on, _ = _objective(teacher, cfg, tiny_config("detr", hidden_dim=32), config)(
        student, batch, PROGRESS
    )
    assert on["distill_contrastive"] > 0
    total(on).backward()


def test_distillation_runs_under_bf16_autocast(batch):
    # the GPU path trains under bf16 autocast; CPU autocast exercises the same dtype handling
    torch.manual_seed(0)
    t_cfg = tiny_config("deformable_detr", levels=["C3", "C4", "C5"], box_refine=True)
    s_cfg = tiny_config("deformable_detr", levels=["C3", "C4", "C5"], two_stage=True, hidden_dim=32)
    teacher, student = build_model(t_cfg), build_model(s_cfg)
    config = DETRDistillConfig(contrastive=ContrastiveConfig(enabled=True, weight=0.2))
    objective = _objective(teacher, t_cfg, s_cfg, config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, _ = objective(student, batch, PROGRESS)
    loss = total(losses)
    assert torch.isfinite(loss) and any(k.startswith("enc_") for k in losses)
    loss.backward()


def test_classes_without_a_teacher_counterpart_get_no_logits_distillation(batch):
    """With teacher_classes [0, 1], the logits term neither reads nor trains class 2."""
    torch.manual_seed(0)
    cfg = tiny_config("detr", levels=["C4", "C5"])
    teacher, student = build_model(cfg), build_model(cfg)
    config = DETRDistillConfig(feature={"enabled": False}, query_prior={"enabled": False})
    objective = DETRDistill(
        teacher, cfg, cfg, SetCriterion(3, HungarianMatcher()), config, teacher_classes=[0, 1]
    )
    s_out = student(batch.images, batch.pixel_mask)
    s_out.logits.retain_grad()
    losses, _ = objective.distill_losses(s_out, objective.prepare(batch, PROGRESS)[0], batch)
    total(losses).backward()
    grad = s_out.logits.grad
    assert grad[..., 2].abs().max() == 0 and grad[..., :2].abs().max() > 0
    # the teacher's class-2 scores do not change the loss either
    state = objective.prepare(batch, PROGRESS)[0]
    state.output.logits[..., 2] += 10.0
    again, _ = objective.distill_losses(s_out, state, batch)
    assert float(total(again)) == pytest.approx(float(total(losses)), abs=1e-5)
