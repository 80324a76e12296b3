"""Tests for distill.logits_distill: the matching cost, the assignment and the losses."""

from __future__ import annotations

import itertools

import pytest
import torch

from detr_models.box_ops import cxcywh_to_xyxy, inverse_sigmoid, safe_pairwise_giou
from distill.logits_distill import (
    batched_pairwise_giou,
    clamp_boxes_to_image,
    logits_distillation_loss,
    match_to_teacher,
    matching_cost,
)


def random_boxes(batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """`[batch, n, 4]` valid normalised cxcywh boxes inside the image."""
    centre = torch.rand(batch, n, 2, generator=generator) * 0.5 + 0.25
    size = torch.rand(batch, n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def binary_cross_entropy(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Elementwise BCE from its definition, in float64: -(p log s(z) + (1-p) log(1-s(z)))."""
    z, p = z.double(), p.double()
    s = 1.0 / (1.0 + torch.exp(-z))
    return -(p * torch.log(s) + (1 - p) * torch.log(1 - s))


def naive_cost(student_logits, student_boxes, teacher_logits, teacher_boxes) -> torch.Tensor:
    """The cost of one image `[Qs, Qt]` by a double loop (weights 1, 5, 2)."""
    teacher_boxes = clamp_boxes_to_image(teacher_boxes)
    p = teacher_logits.sigmoid()
    cost = torch.zeros(len(student_logits), len(teacher_logits), dtype=torch.float64)
    for i, j in itertools.product(range(len(student_logits)), range(len(teacher_logits))):
        bce = binary_cross_entropy(student_logits[i], p[j]).sum()
        l1 = (student_boxes[i] - teacher_boxes[j]).abs().sum()
        giou = safe_pairwise_giou(
            cxcywh_to_xyxy(student_boxes[i : i + 1]), cxcywh_to_xyxy(teacher_boxes[j : j + 1])
        )[0, 0]
        cost[i, j] = bce + 5 * l1 - 2 * giou
    return cost


def test_vectorised_cost_equals_double_loop() -> None:
    g = torch.Generator().manual_seed(0)
    s_logits = torch.randn(2, 5, 4, generator=g) * 3  # [B, Qs, C]
    t_logits = torch.randn(2, 3, 4, generator=g) * 3  # [B, Qt, C]
    s_boxes = random_boxes(2, 5, g)
    t_boxes = random_boxes(2, 3, g)
    t_boxes[0, 0] = torch.tensor([0.95, 0.1, 0.3, 0.4])  # sticks out: clamped before the cost
    cost = matching_cost(s_logits, s_boxes, t_logits, t_boxes, 1.0, 5.0, 2.0)
    assert cost.shape == (2, 5, 3)
    for b in range(2):
        expected = naive_cost(s_logits[b], s_boxes[b], t_logits[b], t_boxes[b])
        torch.testing.assert_close(cost[b].double(), expected, rtol=1e-5, atol=1e-4)


def test_batched_giou_equals_pairwise_per_image() -> None:
    g = torch.Generator().manual_seed(1)
    a = cxcywh_to_xyxy(random_boxes(3, 6, g))
    b = cxcywh_to_xyxy(random_boxes(3, 4, g))
    a[0, 0] = torch.tensor([0.2, 0.2, 0.2, 0.2])  # zero area
    b[0, 0] = torch.tensor([0.2, 0.2, 0.2, 0.2])  # zero area: 0/0 against the box above
    a[1, 2] = float("nan")
    giou = batched_pairwise_giou(a, b)
    for i in range(3):
        torch.testing.assert_close(giou[i], safe_pairwise_giou(a[i], b[i]))
    assert not giou.isnan().any()


def hand_built_case() -> tuple[torch.Tensor, ...]:
    """A teacher with 3 known predictions; the student has them in order (2, 0, 1) plus one
    extra, low-scoring query on an empty corner."""
    teacher_prob = torch.tensor([[[0.9, 0.05], [0.1, 0.8], [0.3, 0.4]]])  # [1, 3, 2]
    teacher_boxes = torch.tensor(
        [[[0.25, 0.25, 0.2, 0.2], [0.7, 0.3, 0.3, 0.2], [0.5, 0.75, 0.4, 0.3]]]
    )  # [1, 3, 4]
    teacher_logits = inverse_sigmoid(teacher_prob)
    perm = torch.tensor([2, 0, 1])
    extra_logits = torch.tensor([[[-4.0, -5.0]]])  # [1, 1, 2]
    extra_box = torch.tensor([[[0.05, 0.95, 0.05, 0.05]]])  # [1, 1, 4]
    student_logits = torch.cat([teacher_logits[:, perm], extra_logits], dim=1)  # [1, 4, 2]
    student_boxes = torch.cat([teacher_boxes[:, perm], extra_box], dim=1)  # [1, 4, 4]
    return student_logits, student_boxes, teacher_logits, teacher_boxes, perm


def test_assignment_recovers_the_permutation() -> None:
    s_logits, s_boxes, t_logits, t_boxes, perm = hand_built_case()
    ((student_idx, teacher_idx),) = match_to_teacher(s_logits, s_boxes, t_logits, t_boxes)
    assert student_idx.dtype == teacher_idx.dtype == torch.int64
    assert student_idx.tolist() == [0, 1, 2]  # the extra query (3) stays unmatched
    assert teacher_idx.tolist() == perm.tolist()


def test_losses_of_the_hand_built_case() -> None:
    s_logits, s_boxes, t_logits, t_boxes, perm = hand_built_case()
    losses, _ = logits_distillation_loss(s_logits, s_boxes, t_logits, t_boxes)
    assert set(losses) == {"cls", "bbox", "giou"}
    assert losses["bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["giou"].item() == pytest.approx(0.0, abs=1e-4)

    target = t_logits[0, perm].sigmoid()
    matched = binary_cross_entropy(s_logits[0, :3], target).sum()
    entropy = -(target * target.log() + (1 - target) * (1 - target).log()).sum()
    background = binary_cross_entropy(s_logits[0, 3], torch.zeros(2)).sum()
    expected = (matched - entropy + background) / (1 * 3)  # divided by B * Qt
    assert losses["cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_identical_teacher_gives_zero() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 3, generator=g) * 2
    boxes = random_boxes(2, 6, g)
    losses, indices = logits_distillation_loss(logits, boxes, logits, boxes)
    for student_idx, teacher_idx in indices:
        assert student_idx.tolist() == teacher_idx.tolist() == list(range(6))
    assert losses["bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["giou"].item() == pytest.approx(0.0, abs=1e-4)
    # BCE minus the targets' entropy: zero exactly when the student reproduces the teacher
    assert losses["cls"].item() == pytest.approx(0.0, abs=1e-5)

    for seed in range(3):
        noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed)) * 0.3
        perturbed, _ = logits_distillation_loss(logits + noise, boxes, logits, boxes, indices)
        assert perturbed["cls"].item() > losses["cls"].item() + 1e-4


def test_gradient_reaches_the_student_only() -> None:
    g = torch.Generator().manual_seed(3)
    s_logits = torch.randn(2, 5, 3, generator=g).requires_grad_()
    s_boxes = random_boxes(2, 5, g).requires_grad_()
    t_logits = torch.randn(2, 4, 3, generator=g).requires_grad_()
    t_boxes = random_boxes(2, 4, g).requires_grad_()
    losses, _ = logits_distillation_loss(s_logits, s_boxes, t_logits, t_boxes)
    sum(losses.values()).backward()
    assert s_logits.grad is not None and s_logits.grad.abs().sum() > 0
    assert s_boxes.grad is not None and s_boxes.grad.abs().sum() > 0
    assert t_logits.grad is None and t_boxes.grad is None


def test_fewer_student_queries_than_teacher_predictions() -> None:
    g = torch.Generator().manual_seed(4)
    t_logits = torch.randn(2, 6, 3, generator=g)
    t_boxes = random_boxes(2, 6, g)
    keep = torch.tensor([4, 1, 5])
    losses, indices = logits_distillation_loss(
        t_logits[:, keep], t_boxes[:, keep], t_logits, t_boxes
    )
    for student_idx, teacher_idx in indices:
        assert student_idx.tolist() == [0, 1, 2]
        assert teacher_idx.tolist() == keep.tolist()  # the copied predictions are found
    assert losses["bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert all(v.isfinite() for v in losses.values())


def test_nan_student_boxes_do_not_stop_matching() -> None:
    g = torch.Generator().manual_seed(5)
    s_logits = torch.randn(1, 4, 3, generator=g)
    s_boxes = random_boxes(1, 4, g)
    s_boxes[0, 1] = float("nan")
    t_logits = torch.randn(1, 3, 3, generator=g)
    t_boxes = random_boxes(1, 3, g)
    ((student_idx, _),) = match_to_teacher(s_logits, s_boxes, t_logits, t_boxes)
    assert len(student_idx) == 3
    assert 1 not in student_idx.tolist()  # the NaN query is avoided when it can be
    losses, _ = logits_distillation_loss(s_logits, s_boxes, t_logits, t_boxes)
    assert losses["bbox"].isfinite()


def test_given_indices_are_used_as_is() -> None:
    s_logits, s_boxes, t_logits, t_boxes, _ = hand_built_case()
    # The identity is not the optimal assignment here (the optimum is the permutation).
    given = [(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))]
    losses, used = logits_distillation_loss(s_logits, s_boxes, t_logits, t_boxes, given)
    assert [(s.tolist(), t.tolist()) for s, t in used] == [([0, 1, 2], [0, 1, 2])]
    expected_l1 = (s_boxes[0, :3] - t_boxes[0, :3]).abs().sum() / 3
    assert losses["bbox"].item() == pytest.approx(5 * expected_l1.item(), rel=1e-5)
    assert losses["bbox"].item() > 0.1


def test_empty_assignment_keeps_every_loss_in_the_graph() -> None:
    s_logits = torch.randn(1, 3, 2, requires_grad=True)
    s_boxes = torch.rand(1, 3, 4, requires_grad=True)
    t_logits, t_boxes = torch.randn(1, 2, 2), torch.rand(1, 2, 4)
    empty = [(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))]
    losses, _ = logits_distillation_loss(s_logits, s_boxes, t_logits, t_boxes, empty)
    assert all(v.requires_grad for v in losses.values())
    assert losses["bbox"].item() == 0.0
    # Every student query is background.
    expected = binary_cross_entropy(s_logits.detach(), torch.zeros(1, 3, 2)).sum() / 2
    assert losses["cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_weights_scale_and_half_precision_is_float32() -> None:
    s_logits, s_boxes, t_logits, t_boxes, _ = hand_built_case()
    base, indices = logits_distillation_loss(s_logits, s_boxes, t_logits, t_boxes)
    scaled, _ = logits_distillation_loss(
        s_logits.bfloat16(), s_boxes, t_logits.bfloat16(), t_boxes, indices, weight_class=3.0
    )
    assert scaled["cls"].dtype == torch.float32
    assert scaled["cls"].item() == pytest.approx(3 * base["cls"].item(), rel=2e-2)


def test_bad_inputs_raise_clear_errors() -> None:
    logits, boxes = torch.randn(1, 3, 2), torch.rand(1, 3, 4)
    with pytest.raises(ValueError, match="classes"):
        match_to_teacher(logits, boxes, torch.randn(1, 3, 5), boxes)
    with pytest.raises(ValueError, match="teacher index"):
        logits_distillation_loss(
            logits, boxes, logits, boxes, [(torch.tensor([0]), torch.tensor([7]))]
        )
    with pytest.raises(ValueError, match="batch"):
        logits_distillation_loss(logits, boxes, logits, boxes, [])


def test_clamp_boxes_to_image() -> None:
    boxes = torch.tensor([[0.95, 0.5, 0.3, 0.2], [0.5, 0.5, 0.2, 0.2]])
    clamped = clamp_boxes_to_image(boxes)
    torch.testing.assert_close(clamped[0], torch.tensor([0.9, 0.5, 0.2, 0.2]))
    torch.testing.assert_close(clamped[1], boxes[1])
