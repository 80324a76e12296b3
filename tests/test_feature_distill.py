"""Tests for distill.feature_distill: the target-aware mask, the feature loss and the adapter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from detr_models.box_ops import cxcywh_to_xyxy
from distill.feature_distill import FeatureAdapter, feature_distillation_loss, target_aware_mask


def naive_mask(logits, boxes, hidden, feature, gt, top_k, floor) -> torch.Tensor:
    """psi `[H,W]` of one unpadded image, pixel by pixel and pair by pair, in float64."""
    num_queries, num_classes = logits.shape
    scores = logits.double().sigmoid()
    pairs = sorted(
        ((scores[q, c].item(), q) for q in range(num_queries) for c in range(num_classes)),
        reverse=True,
    )[:top_k]
    if len(gt):
        best = box_iou(cxcywh_to_xyxy(boxes.double()), cxcywh_to_xyxy(gt.double())).amax(1)
    else:
        best = torch.ones(num_queries, dtype=torch.float64)
    _, height, width = feature.shape
    m = torch.zeros(height, width, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            f = feature[:, y, x].double()
            for score, q in pairs:
                cos = F.cosine_similarity(hidden[q].double(), f, dim=0)
                m[y, x] += score * best[q] * cos
    m = m.clamp(min=floor)
    return m / m.max()


def random_teacher(batch, queries, classes, dim, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=g) * 2  # [B, Q, C]
    centre = torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.1
    boxes = torch.cat([centre, size], dim=-1)  # [B, Q, 4]
    hidden = torch.randn(batch, queries, dim, generator=g)  # [B, Q, D]
    feature = torch.randn(batch, dim, height, width, generator=g)  # [B, D, H, W]
    return logits, boxes, hidden, feature


def test_mask_equals_the_naive_definition_with_and_without_gt() -> None:
    logits, boxes, hidden, feature = random_teacher(2, 5, 3, 6, 4, 5, seed=0)
    # Image 0 has GT (quality = score * IoU); image 1 has none (quality = score).
    gt = [torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.4]]), torch.zeros(0, 4)]
    psi = target_aware_mask(logits, boxes, hidden, feature, gt, top_k=7, floor=0.01)
    assert psi.shape == (2, 4, 5) and psi.dtype == torch.float32
    for b in range(2):
        expected = naive_mask(logits[b], boxes[b], hidden[b], feature[b], gt[b], 7, 0.01)
        torch.testing.assert_close(psi[b].double(), expected, rtol=1e-5, atol=1e-6)


def test_psi_range_and_padding() -> None:
    logits, boxes, hidden, feature = random_teacher(2, 6, 4, 8, 6, 7, seed=1)
    pad = torch.zeros(2, 6, 7, dtype=torch.bool)
    pad[0, :, 5:] = True  # image 0 is narrower
    pad[1, 4:, :] = True  # image 1 is shorter
    gt = [torch.tensor([[0.4, 0.4, 0.3, 0.3]]), torch.tensor([[0.6, 0.5, 0.2, 0.5]])]
    psi = target_aware_mask(logits, boxes, hidden, feature, gt, feature_mask=pad)
    valid = psi[~pad]
    assert (valid > 0).all() and (valid <= 1).all()
    assert (psi[pad] == 0).all()
    for b in range(2):
        assert psi[b][~pad[b]].max().item() == 1.0


def test_mask_finds_the_object_region() -> None:
    dim, height, width, floor = 8, 12, 16, 0.01
    v = torch.zeros(dim)
    v[0] = 1.0  # the object's direction
    g = torch.Generator().manual_seed(2)
    feature = torch.randn(1, dim, height, width, generator=g)
    feature[:, 0] = 0.0  # background: orthogonal to v
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[3:7, 4:10] = True  # the object region
    scale = torch.rand(1, 1, height, width, generator=g) + 0.5
    noise = torch.randn(1, dim, height, width, generator=g) * 0.05
    feature = torch.where(inside, v[None, :, None, None] * scale + noise, feature)

    # Two confident queries on the object (hidden = v); three unconfident ones elsewhere.
    object_box = torch.tensor([7 / 16, 5 / 12, 6 / 16, 4 / 12])  # cxcywh of the region
    logits = torch.full((1, 5, 3), -8.0)
    logits[0, 0, 1] = 4.0
    logits[0, 1, 2] = 3.0
    boxes = torch.tensor([[0.85, 0.85, 0.1, 0.1]]).repeat(1, 5, 1)  # [1, 5, 4], off the object
    boxes[0, :2] = object_box
    hidden = torch.randn(1, 5, dim, generator=g)
    hidden[0, :2] = v
    gt = [object_box[None]]

    psi = target_aware_mask(logits, boxes, hidden, feature, gt, top_k=100, floor=floor)[0]
    peak = torch.nonzero(psi == psi.max())[0]
    assert bool(inside[peak[0], peak[1]])
    assert psi[inside].min() > 0.9
    # Background cosine with v is 0 (the low-quality queries add ~1e-4), so m sits at the floor.
    peak_m = torch.sigmoid(torch.tensor(4.0)) + torch.sigmoid(torch.tensor(3.0))
    torch.testing.assert_close(
        psi[~inside], torch.full_like(psi[~inside], floor / peak_m.item()), rtol=0.1, atol=1e-4
    )


def test_gt_far_from_every_box_gives_a_flat_mask_but_no_gt_uses_scores() -> None:
    logits, boxes, hidden, feature = random_teacher(1, 4, 2, 6, 5, 5, seed=3)
    far = [torch.tensor([[0.05, 0.05, 0.04, 0.04]])]  # IoU 0 with every box: quality 0
    psi_far = target_aware_mask(logits, boxes, hidden, feature, far)
    torch.testing.assert_close(psi_far, torch.ones_like(psi_far))
    psi_none = target_aware_mask(logits, boxes, hidden, feature, [torch.zeros(0, 4)])
    assert psi_none.min() < 0.5


def test_loss_is_zero_for_identical_features_and_matches_its_formula() -> None:
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(2, 3, 4, 5, generator=g)
    psi = torch.rand(2, 4, 5, generator=g)
    assert feature_distillation_loss(teacher.clone(), teacher, psi).item() == 0.0

    student = torch.randn(2, 3, 4, 5, generator=g)
    expected = ((psi[:, None] * teacher - psi[:, None] * student) ** 2).mean()
    loss = feature_distillation_loss(student, teacher, psi)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    pad = torch.zeros(2, 4, 5, dtype=torch.bool)
    pad[1, :, 3:] = True
    masked = ((psi * ~pad)[:, None] * (teacher - student)) ** 2
    expected = masked.sum() / (int((~pad).sum()) * 3)
    loss = feature_distillation_loss(student, teacher, psi, feature_mask=pad)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_gradient_reaches_the_student_only() -> None:
    g = torch.Generator().manual_seed(5)
    student = torch.randn(1, 4, 3, 3, generator=g).requires_grad_()
    teacher = torch.randn(1, 4, 3, 3, generator=g).requires_grad_()
    psi = torch.rand(1, 3, 3, generator=g).requires_grad_()
    feature_distillation_loss(student, teacher, psi).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None and psi.grad is None


def test_mask_carries_no_gradient() -> None:
    logits, boxes, hidden, feature = random_teacher(1, 3, 2, 4, 3, 3, seed=6)
    hidden.requires_grad_()
    feature.requires_grad_()
    psi = target_aware_mask(logits, boxes, hidden, feature, [torch.zeros(0, 4)])
    assert not psi.requires_grad


def test_adapter_is_identity_for_equal_widths_and_a_1x1_conv_otherwise() -> None:
    x = torch.randn(2, 6, 4, 5)
    same = FeatureAdapter(6, 6)
    assert sum(p.numel() for p in same.parameters()) == 0
    assert torch.equal(same(x), x)

    wider = FeatureAdapter(6, 10)
    assert isinstance(wider.proj, torch.nn.Conv2d) and wider.proj.kernel_size == (1, 1)
    assert sum(p.numel() for p in wider.parameters()) == 6 * 10 + 10
    y = wider(x)
    assert y.shape == (2, 10, 4, 5)
    # 1x1: each output pixel depends on its own input pixel only.
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0
    changed = (wider(x2) - y).abs().sum(1) > 0  # [B, H, W]
    assert changed[:, 0, 0].all() and changed.sum() == 2


def test_bad_inputs_raise_clear_errors() -> None:
    logits, boxes, hidden, feature = random_teacher(2, 3, 2, 4, 3, 3, seed=7)
    with pytest.raises(ValueError, match="GT box sets"):
        target_aware_mask(logits, boxes, hidden, feature, [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="hidden width"):
        target_aware_mask(logits, boxes, hidden, feature[:, :3], [torch.zeros(0, 4)] * 2)
    with pytest.raises(ValueError, match="FeatureAdapter"):
        feature_distillation_loss(torch.randn(2, 5, 3, 3), feature, torch.rand(2, 3, 3))
