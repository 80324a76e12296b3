"""OD-DETR: EMA teacher, matching distillation, initial-query distillation, auxiliary groups."""

import copy

import pytest
import torch

from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.criterion import SetCriterion
from detr_models.matcher import HungarianMatcher
from detr_models.output import QueryGroup
from distill.aux_groups import auxiliary_groups, build_group, select_queries
from distill.combined import CombinedDistill
from distill.config import (
    AuxGroupsConfig,
    DETRDistillConfig,
    EmaConfig,
    MatchingConfig,
    ODDETRConfig,
)
from distill.detrdistill import DETRDistill
from distill.ema import EmaTeacher, ema_decay
from distill.matching_distill import (
    agreement,
    extra_teacher_pairs,
    map_by_token,
    matching_distillation_loss,
)
from distill.objective import Progress
from distill.od_detr import INIT_GROUP, ODDETR
from distill.schedules import TermConfig
from tests.overfit import shapes_batch

PROGRESS = Progress(0, 0, 1, 1)


def pair(queries, gts):
    return torch.tensor(queries, dtype=torch.int64), torch.tensor(gts, dtype=torch.int64)


# ----------------------------------------------------------------------------- EMA
def test_ema_update_arithmetic_and_warmup():
    student = torch.nn.Linear(2, 1)
    ema = EmaTeacher(student, decay=0.9, warmup=False)
    start = ema.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema.update(student)
    assert torch.allclose(ema.model.weight, 0.9 * start + 0.1 * student.weight)
    assert int(ema.updates) == 1 and not ema.model.weight.requires_grad
    # warm-up: (1 + t) / (10 + t) until it reaches the decay
    assert ema_decay(0.9997, 0, True) == pytest.approx(0.1)
    assert ema_decay(0.9997, 5, True) == pytest.approx(6 / 15)
    assert ema_decay(0.5, 100, True) == 0.5 and ema_decay(0.9997, 0, False) == 0.9997
    warm = EmaTeacher(student, decay=0.9997, warmup=True)
    before = warm.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(2.0)
    warm.update(student)
    assert torch.allclose(warm.model.weight, 0.1 * before + 0.9 * student.weight)
    # decay 1.0 freezes the average at its starting copy
    frozen = EmaTeacher(student, decay=1.0, warmup=False)
    copy_ = frozen.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(3.0)
    frozen.update(student)
    assert torch.equal(frozen.model.weight, copy_)
    with pytest.raises(ValueError, match="decay"):
        EmaTeacher(student, decay=1.5)


def test_ema_state_dict_restores_the_average_and_the_count():
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    ema = EmaTeacher(student, decay=0.99)
    for _ in range(7):
        with torch.no_grad():
            student.weight.add_(torch.randn_like(student.weight))
        ema.update(student)
    other = EmaTeacher(torch.nn.Linear(3, 2), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert int(other.updates) == 7 and other.current_decay() == ema.current_decay()
    assert torch.equal(other.model.weight, ema.model.weight)
    # the same further updates keep them identical
    ema.update(student)
    other.update(student)
    assert torch.equal(other.model.weight, ema.model.weight)


# ----------------------------------------------------------------------------- auxiliary groups
def test_select_queries_picks_the_cheapest_per_gt_and_settles_duplicates():
    # 5 queries x 2 GTs. GT0's cheapest: q0 (1), q1 (2); GT1's cheapest: q1 (1.5), q2 (3).
    cost = torch.tensor(
        [[1.0, 9.0], [2.0, 1.5], [8.0, 3.0], [4.0, 9.0], [9.0, 5.0]]  # q0..q4
    )
    queries, gts = select_queries(cost, per_gt=2)
    chosen = {(int(q), int(g)) for q, g in zip(queries, gts, strict=True)}
    # q1 is cheaper for GT1 (1.5 < 2), so GT0 takes its next free query q3
    assert chosen == {(0, 0), (3, 0), (1, 1), (2, 1)}
    assert gts.tolist() == [0, 0, 1, 1] and queries.tolist() == [0, 3, 1, 2]
    # one per GT
    queries, gts = select_queries(cost, per_gt=1)
    assert list(zip(queries.tolist(), gts.tolist(), strict=True)) == [(0, 0), (1, 1)]
    # no GT: nothing
    queries, gts = select_queries(torch.zeros(5, 0), per_gt=2)
    assert queries.numel() == 0 and gts.numel() == 0


def test_build_group_pads_and_images_without_gt_get_no_queries():
    content = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    anchors = torch.rand(2, 4, 4)
    selections = [pair([2, 0], [0, 0]), pair([], [])]
    group, assignment = build_group("g", selections, content, anchors)
    assert group.content.shape == (2, 2, 3) and group.position.shape == (2, 2, 4)
    assert torch.equal(group.content[0], content[0, [2, 0]])
    assert torch.equal(group.position[0], anchors[0, [2, 0]])
    assert assignment[0][0].tolist() == [0, 1] and assignment[0][1].tolist() == [0, 0]
    assert assignment[1][0].numel() == 0  # the image without GT has no auxiliary query
    assert torch.all(group.content[1] == 0)
    assert build_group("g", [pair([], []), pair([], [])], content, anchors) is None


def test_auxiliary_groups_from_a_model(tmp_path):
    torch.manual_seed(0)
    _, batch = shapes_batch(tmp_path, count=2)
    targets = [
        batch.targets[0],
        {
            **batch.targets[1],
            "labels": torch.zeros(0, dtype=torch.long),
            "boxes": torch.zeros(0, 4),
        },
    ]
    model = build_model(tiny_config("dab_detr", decoder_layers=3)).eval()
    with torch.no_grad():
        out = model(batch.images, batch.pixel_mask)
    groups = auxiliary_groups(out, targets, HungarianMatcher(), anchors=True, per_gt=2)
    assert [g.name for g, _ in groups] == ["od_aux_s0", "od_aux_s1", "od_aux_s2"]
    num_gt = len(targets[0]["labels"])
    for k, (group, assignment) in enumerate(groups):
        assert group.content.shape[1] == 2 * num_gt
        assert assignment[1][0].numel() == 0
        selected = HungarianMatcher().cost_matrices(out.logits[k], out.boxes[k], targets)[0]
        queries, _ = select_queries(selected, 2)
        assert torch.equal(group.position[0], out.boxes[k][0, queries])
    (pooled, assignment) = auxiliary_groups(
        out, targets, HungarianMatcher(), anchors=True, per_gt=2, pooled=True
    )[0]
    assert pooled.name == "od_aux" and pooled.content.shape[1] == 3 * 2 * num_gt


# ----------------------------------------------------------------------------- matching
def test_matching_distillation_combines_both_assignments():
    targets = [
        {
            "labels": torch.tensor([0, 1]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]),
        }
    ]
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4], [0.7, 0.7, 0.2, 0.2]]])
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    student = [pair([0, 2], [0, 1])]
    teacher = [pair([1, 2], [0, 1])]  # agrees on GT1, sends GT0 to query 1
    assert agreement(student, teacher) == (1, 2)
    extra = extra_teacher_pairs(student, teacher)
    assert extra[0][0].tolist() == [1] and extra[0][1].tolist() == [0]
    losses = matching_distillation_loss(logits, boxes, targets, student, teacher, norm=2.0)
    # query 1 is a positive of GT0 through the teacher: IoU(0.4-box, 0.2-box) = 0.25
    iou = 0.25
    prob = torch.tensor(0.5)
    expected_cls = 0.0
    for target in (1.0, 1.0, iou):  # q0 class 0 (IoU 1), q2 class 1 (IoU 1), q1 class 0 (IoU .25)
        bce = -(target * prob.log() + (1 - target) * (1 - prob).log())
        expected_cls += (target - prob) ** 2 * bce
    expected_cls += 3 * (0.5**2) * -(1 - prob).log()  # the three zero targets
    assert losses["cls"].item() == pytest.approx(float(expected_cls) / 2.0, rel=1e-5)
    assert losses["bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["teacher_bbox"].item() == pytest.approx(0.4 / 2.0, rel=1e-5)
    scaled = matching_distillation_loss(
        logits, boxes, targets, student, teacher, norm=2.0, teacher_scale=0.5
    )
    assert scaled["teacher_bbox"].item() == pytest.approx(0.1, rel=1e-5)
    # plain focal ablation: one-hot targets on the union of positives
    focal = matching_distillation_loss(
        logits, boxes, targets, student, teacher, norm=2.0, quality_focal=False
    )
    assert focal["cls"].item() != pytest.approx(losses["cls"].item())
    focal["cls"].backward()
    assert logits.grad[0, 1, 0] < 0  # pushed up: query 1 is positive for class 0


def test_map_by_token_follows_the_encoder_tokens():
    teacher = [pair([0, 1], [5, 6])]
    mapped = map_by_token(teacher, torch.tensor([[10, 11, 12]]), torch.tensor([[11, 13, 10]]))
    # teacher query 0 (token 10) is student query 2; token 11 is student query 0
    assert mapped[0][0].tolist() == [2, 0] and mapped[0][1].tolist() == [5, 6]
    dropped = map_by_token(teacher, torch.tensor([[10, 11, 12]]), torch.tensor([[12, 13, 14]]))
    assert dropped[0][0].numel() == 0


# ----------------------------------------------------------------------------- the objective
def objective_for(model, config, arch_config):
    criterion = SetCriterion(3, HungarianMatcher())
    return ODDETR(model, criterion, config, arch_config.query_kind == "anchor")


@pytest.mark.parametrize(
    "arch,extra",
    [
        ("dab_detr", {}),
        ("conditional_detr", {}),
        ("deformable_detr", {"levels": ["C3", "C4", "C5"], "two_stage": True, "box_refine": True}),
    ],
)
def test_frozen_ema_of_the_student_gives_zero_prediction_distillation(arch, extra, tmp_path):
    torch.manual_seed(0)
    _, batch = shapes_batch(tmp_path, count=2)
    config = tiny_config(arch, **extra)
    model = build_model(config)
    ema_config = ODDETRConfig(ema=EmaConfig(decay=1.0, warmup=False))
    objective = objective_for(model, ema_config, config)
    objective.after_step()  # decay 1: the EMA stays the student's copy
    losses, diagnostics = objective(model, batch, PROGRESS)
    init = [v for k, v in losses.items() if k.startswith("distill_init_")]
    assert len(init) == 3 * config.decoder_layers
    assert all(abs(v.item()) < 1e-4 for v in init), {
        k: v.item() for k, v in losses.items() if k.startswith("distill_init_")
    }
    # the teacher matches like the student: no extra positive, nothing for the teacher's boxes
    assert diagnostics["distill_match_agreement"] == 1.0
    assert all(v.item() == 0 for k, v in losses.items() if k.startswith("distill_match_"))
    # a moved student no longer agrees with its frozen copy
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    losses, _ = objective(model, batch, PROGRESS)
    assert sum(v.item() for k, v in losses.items() if k.startswith("distill_init_")) > 1e-3


def test_extra_groups_change_nothing_for_the_main_queries(tmp_path):
    torch.manual_seed(0)
    _, batch = shapes_batch(tmp_path, count=2)
    for arch, extra in (("dab_detr", {}), ("deformable_detr", {"levels": ["C3", "C4", "C5"]})):
        config = tiny_config(arch, **extra)
        model = build_model(config).eval()
        objective = objective_for(model, ODDETRConfig(), config)
        _state, groups = objective.prepare(batch, PROGRESS)
        assert {g.name for g in groups} >= {INIT_GROUP, "od_aux_s0", "od_aux_s1"}
        with torch.no_grad():
            plain = model(batch.images, batch.pixel_mask)
            grouped = model(batch.images, batch.pixel_mask, groups)
        assert torch.allclose(plain.logits, grouped.logits, atol=1e-5)
        assert torch.allclose(plain.boxes, grouped.boxes, atol=1e-5)
        assert set(grouped.groups) == {g.name for g in groups} and not plain.groups


def test_terms_switch_off_and_gradients_reach_the_student(tmp_path):
    torch.manual_seed(0)
    _, batch = shapes_batch(tmp_path, count=2)
    config = tiny_config("dab_detr")
    model = build_model(config)
    off = ODDETRConfig(
        matching=MatchingConfig(enabled=False),
        initial_query=TermConfig(enabled=False),
        aux_groups=AuxGroupsConfig(enabled=False),
    )
    objective = objective_for(model, off, config)
    losses, _ = objective(model, batch, PROGRESS)
    assert not [k for k in losses if k.startswith("distill_")]  # plain detection training
    full = objective_for(model, ODDETRConfig(), config)
    losses, _ = full(model, batch, PROGRESS)
    sum(losses.values()).backward()
    assert model.query_position.weight.grad is not None
    assert all(p.grad is None for p in full.ema.parameters())  # the teacher never learns
    # the EMA is not a parameter the optimiser could pick up, but it is in the state dict
    assert not [p for p in full.parameters() if p.requires_grad]
    assert any(k.startswith("ema.model.") for k in full.state_dict())


def test_detrdistill_and_od_detr_in_one_run(tmp_path):
    torch.manual_seed(0)
    _, batch = shapes_batch(tmp_path, count=2)
    teacher_config = tiny_config("dab_detr", decoder_layers=3)
    student_config = tiny_config("dab_detr", hidden_dim=32, ffn_dim=64)
    teacher = build_model(teacher_config)
    student = build_model(student_config)
    criterion = SetCriterion(3, HungarianMatcher())
    offline = DETRDistill(teacher, teacher_config, student_config, criterion, DETRDistillConfig())
    online = ODDETR(student, criterion, ODDETRConfig(), anchors=True)
    combined = CombinedDistill(offline, online)
    losses, _diagnostics = combined(student, batch, PROGRESS)
    names = set(losses)
    assert {"distill_logits_cls_s0", "distill_feature_s0", "distill_prior_loss_cls_s0"} <= names
    assert {"distill_init_cls_s0", "distill_aux_s0_loss_cls_s0", "distill_match_bbox_s0"} <= names
    sum(losses.values()).backward()
    assert student.query_position.weight.grad is not None
    combined.after_step()
    assert int(online.ema.updates) == 1 and combined.teacher_model is teacher


def test_od_detr_query_groups_are_detached(tmp_path):
    torch.manual_seed(0)
    _, batch = shapes_batch(tmp_path, count=2)
    config = tiny_config("dab_detr")
    model = build_model(config)
    objective = objective_for(model, ODDETRConfig(), config)
    _, groups = objective.prepare(batch, PROGRESS)
    assert all(isinstance(g, QueryGroup) for g in groups)
    assert not any(g.content.requires_grad or g.position.requires_grad for g in groups)
    copy.deepcopy(objective)  # checkpoints and Ray may copy it


def _ddp_ema_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        torch.manual_seed(0)  # the same initial weights on every rank, as DDP requires
        model = torch.nn.Linear(4, 2)
        ema = EmaTeacher(model, decay=0.8, warmup=False)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)  # every rank sees different data
        for _ in range(3):
            loss = ddp(torch.randn(8, 4)).pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ema.update(ddp)  # a DDP wrapper is unwrapped
        torch.save(
            {"ema": ema.model.state_dict(), "student": model.state_dict()},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ema_follows_the_synchronised_weights_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_ema_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for key in first["ema"]:
        assert torch.equal(first["ema"][key], second["ema"][key])
        assert torch.equal(first["student"][key], second["student"][key])
        assert not torch.equal(first["ema"][key], first["student"][key])
