"""Tests for detr_models.criterion: per-stage losses, fixed assignments and soft targets."""

from __future__ import annotations

import pytest
import torch

from detr_models.criterion import SetCriterion, num_boxes, one_hot_targets, total
from detr_models.matcher import HungarianMatcher
from detr_models.output import StageOutputs

NUM_CLASSES = 3
TARGETS = [
    {
        "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]),
        "labels": torch.tensor([1, 2]),
    },
    {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]), "labels": torch.tensor([0])},
]
# The right assignment: image 0 query 1 -> target 0, query 3 -> target 1; image 1 query 2 -> 0.
RIGHT = [(torch.tensor([1, 3]), torch.tensor([0, 1])), (torch.tensor([2]), torch.tensor([0]))]
WRONG = [(torch.tensor([0, 2]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([0]))]


def stage_outputs(logits: torch.Tensor, boxes: torch.Tensor) -> StageOutputs:
    """StageOutputs holding only what the criterion reads; the rest is small placeholders."""
    num_stages, batch, queries = logits.shape[:3]
    return StageOutputs(
        logits=logits,
        boxes=boxes,
        hidden=torch.zeros(num_stages, batch, queries, 8),
        references=None,
        init_content=torch.zeros(batch, queries, 8),
        init_position=torch.zeros(batch, queries, 8),
    )


def perfect_predictions(num_stages: int = 2, queries: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [L,B,Q,C] and boxes [L,B,Q,4] that reproduce TARGETS exactly under RIGHT."""
    logits = torch.full((num_stages, 2, queries, NUM_CLASSES), -12.0)
    boxes = torch.tensor([0.1, 0.9, 0.05, 0.05]).expand(num_stages, 2, queries, 4).clone()
    for b, (query_idx, target_idx) in enumerate(RIGHT):
        for q, t in zip(query_idx.tolist(), target_idx.tolist(), strict=True):
            logits[:, b, q, TARGETS[b]["labels"][t]] = 12.0
            boxes[:, b, q] = TARGETS[b]["boxes"][t]
    return logits, boxes


def make_criterion(**kwargs) -> SetCriterion:
    return SetCriterion(NUM_CLASSES, HungarianMatcher(), **kwargs)


def test_key_names_and_total() -> None:
    logits, boxes = perfect_predictions(num_stages=3)
    losses, indices = make_criterion()(stage_outputs(logits, boxes), TARGETS, prefix="aux_")
    expected = [f"aux_loss_{name}_s{k}" for k in range(3) for name in ("cls", "bbox", "giou")]
    assert sorted(losses) == sorted(expected)
    assert len(indices) == 3 and all(len(stage) == 2 for stage in indices)
    torch.testing.assert_close(total(losses), sum(losses.values()))
    with pytest.raises(ValueError):
        total({})


def test_perfect_predictions_give_near_zero_loss() -> None:
    logits, boxes = perfect_predictions()
    criterion = make_criterion()
    losses, indices = criterion(stage_outputs(logits, boxes), TARGETS)
    for stage in indices:  # matching finds the right assignment by itself
        for (q, t), (q_ref, t_ref) in zip(stage, RIGHT, strict=True):
            assert torch.equal(q, q_ref) and torch.equal(t, t_ref)
    for key, value in losses.items():
        assert float(value) < 1e-4, key

    fixed, _ = criterion(stage_outputs(logits, boxes), TARGETS, indices=RIGHT)
    wrong, _ = criterion(stage_outputs(logits, boxes), TARGETS, indices=WRONG)
    for key in fixed:
        torch.testing.assert_close(fixed[key], losses[key])
        assert float(wrong[key]) > float(fixed[key]) + 0.1, key


def test_fixed_indices_are_not_rematched() -> None:
    logits, boxes = perfect_predictions(num_stages=1)
    criterion = make_criterion()
    _, used = criterion(stage_outputs(logits, boxes), TARGETS, indices=WRONG)
    for (q, t), (q_ref, t_ref) in zip(used[0], WRONG, strict=True):
        assert torch.equal(q, q_ref) and torch.equal(t, t_ref)
    matched, _ = criterion(stage_outputs(logits, boxes), TARGETS)
    forced, _ = criterion(stage_outputs(logits, boxes), TARGETS, indices=WRONG)
    assert float(total(forced)) > float(total(matched)) + 1.0


def test_per_stage_indices() -> None:
    logits, boxes = perfect_predictions(num_stages=2)
    criterion = make_criterion()
    losses, used = criterion(stage_outputs(logits, boxes), TARGETS, indices=[RIGHT, WRONG])
    assert torch.equal(used[0][0][0], RIGHT[0][0]) and torch.equal(used[1][0][0], WRONG[0][0])
    assert float(losses["loss_bbox_s0"]) < 1e-5 < 0.1 < float(losses["loss_bbox_s1"])
    with pytest.raises(ValueError, match="stages"):
        criterion(stage_outputs(logits, boxes), TARGETS, indices=[RIGHT, WRONG, RIGHT])
    with pytest.raises(ValueError, match="one per image"):
        criterion(stage_outputs(logits, boxes), TARGETS, indices=RIGHT[:1])


def test_soft_class_targets() -> None:
    logits, boxes = perfect_predictions(num_stages=2)
    logits = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    criterion = make_criterion()
    outputs = stage_outputs(logits, boxes)
    base, _ = criterion(outputs, TARGETS, indices=RIGHT)

    one_hot = one_hot_targets(logits[0], TARGETS, RIGHT)  # [B, Q, C]
    assert one_hot.sum() == 3 and one_hot[0, 3, 2] == 1 and one_hot[1, 2, 0] == 1
    same_3d, _ = criterion(outputs, TARGETS, indices=RIGHT, class_targets=one_hot)
    same_4d, _ = criterion(
        outputs, TARGETS, indices=RIGHT, class_targets=one_hot.expand(2, -1, -1, -1)
    )
    soft, _ = criterion(
        outputs, TARGETS, indices=RIGHT, class_targets=torch.full_like(one_hot, 0.3)
    )
    for k in range(2):
        key = f"loss_cls_s{k}"
        torch.testing.assert_close(same_3d[key], base[key])
        torch.testing.assert_close(same_4d[key], base[key])
        assert abs(float(soft[key]) - float(base[key])) > 1e-3
        for box_key in (f"loss_bbox_s{k}", f"loss_giou_s{k}"):  # boxes are unaffected
            torch.testing.assert_close(soft[box_key], base[box_key])
    with pytest.raises(ValueError, match="class_targets"):
        criterion(outputs, TARGETS, class_targets=one_hot[:, :2])


def test_stage_weights_scale_stage_keys() -> None:
    logits, boxes = perfect_predictions(num_stages=3)
    logits = logits * 0.1
    boxes = boxes + 0.05
    outputs = stage_outputs(logits, boxes)
    plain, _ = make_criterion()(outputs, TARGETS, indices=RIGHT)
    weighted, _ = make_criterion(stage_weights=[0.5, 0.0, 2.0])(outputs, TARGETS, indices=RIGHT)
    for name in ("cls", "bbox", "giou"):
        torch.testing.assert_close(weighted[f"loss_{name}_s0"], plain[f"loss_{name}_s0"] * 0.5)
        assert float(weighted[f"loss_{name}_s1"]) == 0.0
        torch.testing.assert_close(weighted[f"loss_{name}_s2"], plain[f"loss_{name}_s2"] * 2.0)
    with pytest.raises(ValueError, match="exactly 3 weights"):
        make_criterion(stage_weights=[1.0, 1.0])(outputs, TARGETS)


def test_loss_weights_and_normaliser() -> None:
    logits, boxes = perfect_predictions(num_stages=1)
    boxes = boxes + 0.05
    outputs = stage_outputs(logits, boxes)
    base, _ = make_criterion()(outputs, TARGETS, indices=RIGHT)
    doubled, _ = make_criterion(weight_bbox=10.0)(outputs, TARGETS, indices=RIGHT)
    torch.testing.assert_close(doubled["loss_bbox_s0"], base["loss_bbox_s0"] * 2)
    # Every matched coordinate is off by 0.05: 3 boxes * 4 coords * 0.05 / 3 boxes * weight 5.
    torch.testing.assert_close(base["loss_bbox_s0"], torch.tensor(1.0))
    halved, _ = make_criterion()(outputs, TARGETS, indices=RIGHT, num_boxes=6.0)
    torch.testing.assert_close(halved["loss_bbox_s0"], base["loss_bbox_s0"] / 2)


def test_gradients_reach_logits_and_boxes() -> None:
    logits, boxes = perfect_predictions(num_stages=2)
    logits = (logits * 0.1).requires_grad_()
    boxes = (boxes + 0.02).requires_grad_()
    losses, _ = make_criterion()(stage_outputs(logits, boxes), TARGETS)
    total(losses).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert boxes.grad is not None and boxes.grad.abs().sum() > 0
    assert torch.isfinite(logits.grad).all() and torch.isfinite(boxes.grad).all()


def test_zero_target_batch() -> None:
    empty = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(2)
    ]
    logits = torch.randn(2, 2, 5, NUM_CLASSES, requires_grad=True)
    boxes = torch.rand(2, 2, 5, 4, requires_grad=True)
    losses, indices = make_criterion()(stage_outputs(logits, boxes), empty)
    assert all(len(q) == 0 for stage in indices for q, _ in stage)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_cls_s0"].detach()) > 0  # every query is pushed towards background
    for k in range(2):
        assert losses[f"loss_bbox_s{k}"].item() == 0.0 and losses[f"loss_giou_s{k}"].item() == 0.0
        assert losses[f"loss_bbox_s{k}"].requires_grad and losses[f"loss_giou_s{k}"].requires_grad
    total(losses).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(boxes.grad).all()
    assert boxes.grad is not None


def test_nan_boxes_do_not_raise() -> None:
    logits, boxes = perfect_predictions(num_stages=1)
    boxes[0, 0, 0] = float("nan")
    boxes[0, 1, 4, 2:] = 0.0
    losses, _ = make_criterion()(stage_outputs(logits, boxes), TARGETS)
    assert set(losses) == {"loss_cls_s0", "loss_bbox_s0", "loss_giou_s0"}


def test_num_boxes() -> None:
    assert num_boxes(TARGETS, "cpu") == 3.0
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    assert num_boxes(empty, "cpu") == 1.0
    assert num_boxes([], "cpu") == 1.0
