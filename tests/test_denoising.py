"""Tests for detr_models.denoising: CDN query noise, the attention mask, isolation, losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detr_models.box_ops import cxcywh_to_xyxy
from detr_models.criterion import SetCriterion
from detr_models.denoising import (
    ANCHOR_EPS,
    denoising_attn_mask,
    denoising_losses,
    make_denoising_group,
    noised_corners,
)
from detr_models.matcher import HungarianMatcher
from detr_models.output import StageOutputs

NUM_CLASSES = 5
DIM = 8
TARGETS = [
    {
        "labels": torch.tensor([1, 4, 0]),
        "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9]]),
    },
    {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.4, 0.4, 0.2]])},
    {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
]


def embedding() -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(NUM_CLASSES + 1, DIM, padding_idx=NUM_CLASSES)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_mask(n: int, q: int, size: int, dn_sees_matching: bool = True) -> torch.Tensor:
    """The blocking mask entry by entry, from the rules in words."""
    mask = torch.zeros(n + q, n + q, dtype=torch.bool)
    for i in range(n + q):
        for j in range(n + q):
            if i >= n:  # a matching query sees only matching queries
                mask[i, j] = j < n
            elif j < n:  # a denoising query sees its own group
                mask[i, j] = i // size != j // size
            else:
                mask[i, j] = not dn_sees_matching
    return mask


def test_shapes_and_groups() -> None:
    emb = embedding()
    group = make_denoising_group(TARGETS, emb, NUM_CLASSES, num_queries=7, num_denoising=10)
    assert group is not None
    # max GT 3 -> 10 // 3 = 3 groups of 2 * 3 slots
    assert (group.num_groups, group.group_size, group.num_denoising) == (3, 6, 18)
    assert group.content.shape == (3, 18, DIM)
    assert group.anchors.shape == (3, 18, 4)
    assert group.labels.shape == (3, 18)
    assert group.attn_mask.shape == (25, 25) and group.attn_mask.dtype == torch.bool
    assert bool((group.anchors > 0).all() and (group.anchors < 1).all())
    torch.testing.assert_close(group.content, emb(group.labels))
    group.content.sum().backward()  # the label embedding is trained through the content
    assert emb.weight.grad is not None and emb.weight.grad[:NUM_CLASSES].abs().sum() > 0
    dn, main = group.split(torch.zeros(2, 25, 3), dim=1)
    assert dn.shape == (2, 18, 3) and main.shape == (2, 7, 3)

    few = make_denoising_group(TARGETS, emb, NUM_CLASSES, num_queries=7, num_denoising=2)
    assert few is not None and few.num_groups == 1  # fewer queries than GT: still one group


def test_empty_batch_returns_none() -> None:
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    assert make_denoising_group(empty, embedding(), NUM_CLASSES, 7) is None
    assert make_denoising_group([], embedding(), NUM_CLASSES, 7) is None
    assert make_denoising_group(TARGETS, embedding(), NUM_CLASSES, 7, num_denoising=0) is None


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="num_classes \\+ 1"):
        make_denoising_group(TARGETS, nn.Embedding(NUM_CLASSES, DIM), NUM_CLASSES, 7)
    bad = [{"labels": torch.tensor([NUM_CLASSES]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}]
    with pytest.raises(ValueError, match="labels"):
        make_denoising_group(bad, embedding(), NUM_CLASSES, 7)
    with pytest.raises(ValueError, match="multiple"):
        denoising_attn_mask(10, 5, 4)


def test_deterministic_with_generator() -> None:
    emb = embedding()
    a = make_denoising_group(TARGETS, emb, NUM_CLASSES, 7, generator=generator(3))
    b = make_denoising_group(TARGETS, emb, NUM_CLASSES, 7, generator=generator(3))
    c = make_denoising_group(TARGETS, emb, NUM_CLASSES, 7, generator=generator(4))
    assert torch.equal(a.anchors, b.anchors) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.anchors, c.anchors)


def test_noised_corners_follow_the_cdn_rule() -> None:
    gen = generator(1)
    boxes = torch.rand(4000, 4, generator=gen) * 0.5 + 0.25  # cx, cy, w, h
    negative = torch.arange(4000) % 2 == 1
    scale = 0.7
    corners = noised_corners(boxes, negative, scale, gen)
    half = torch.cat([boxes[:, 2:], boxes[:, 2:]], 1) * 0.5 * scale  # [N, 4]
    ratio = (corners - cxcywh_to_xyxy(boxes)).abs() / half  # |offset| in units of the range
    assert ratio[~negative].max() < 1.0 + 1e-4
    assert ratio[negative].min() > 1.0 - 1e-4 and ratio[negative].max() < 2.0 + 1e-4
    # both directions and the whole range are used
    offset = corners - cxcywh_to_xyxy(boxes)
    assert (offset > 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert ratio[~negative].mean().item() == pytest.approx(0.5, abs=0.03)
    assert ratio[negative].mean().item() == pytest.approx(1.5, abs=0.03)
    torch.testing.assert_close(
        noised_corners(boxes, negative, 0.0, gen), cxcywh_to_xyxy(boxes)
    )  # no noise at scale 0


def test_group_boxes_within_positive_and_beyond_negative_range() -> None:
    # Small central boxes: no corner reaches the image border, so nothing is clipped.
    gen = generator(2)
    count, scale = 300, 1.0
    centre = 0.4 + torch.rand(count, 2, generator=gen) * 0.2
    size = 0.05 + torch.rand(count, 2, generator=gen) * 0.1
    targets = [
        {"labels": torch.zeros(count, dtype=torch.int64), "boxes": torch.cat([centre, size], 1)}
    ]
    group = make_denoising_group(
        targets,
        embedding(),
        NUM_CLASSES,
        7,
        num_denoising=600,
        box_noise_scale=scale,
        generator=gen,
    )
    anchors = group.anchors[0].view(group.num_groups, 2, count, 4)  # group, pos/neg, GT
    gt = cxcywh_to_xyxy(targets[0]["boxes"])  # [M, 4]
    half = torch.cat([size, size], 1) * 0.5 * scale  # [M, 4]: w, h, w, h
    tol = 1e-4

    pos = (cxcywh_to_xyxy(anchors[:, 0]) - gt).abs() / half  # [G, M, 4]
    assert pos.max() < 1.0 + tol

    # A negative's corners all lie beyond the positive range, unless the two corners of an
    # axis crossed; that axis then collapses to the minimum width, as in the reference.
    neg = anchors[:, 1]  # [G, M, 4]
    dist = (cxcywh_to_xyxy(neg) - gt).abs() / half
    for axis in (0, 1):  # x: corners 0 and 2, width 2; y: corners 1 and 3, height 3
        kept = neg[..., 2 + axis] > 2 * ANCHOR_EPS  # [G, M]
        assert kept.float().mean() > 0.5
        assert dist[..., axis][kept].min() > 1.0 - tol
        assert dist[..., axis + 2][kept].min() > 1.0 - tol
        torch.testing.assert_close(
            neg[..., 2 + axis][~kept], torch.full_like(neg[..., 2 + axis][~kept], ANCHOR_EPS)
        )


def test_clipped_to_the_image() -> None:
    targets = [
        {
            "labels": torch.tensor([0, 1]),
            "boxes": torch.tensor([[0.05, 0.95, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0]]),
        }
    ]
    group = make_denoising_group(targets, embedding(), NUM_CLASSES, 7, generator=generator(5))
    corners = cxcywh_to_xyxy(group.anchors)
    assert bool((corners >= -1e-6).all() and (corners <= 1 + 1e-6).all())
    assert bool((group.anchors >= ANCHOR_EPS).all() and (group.anchors <= 1 - ANCHOR_EPS).all())


def test_label_flip_rate() -> None:
    count, ratio = 2000, 0.5
    labels = torch.arange(count) % NUM_CLASSES
    targets = [{"labels": labels, "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]).expand(count, 4)}]
    group = make_denoising_group(
        targets,
        embedding(),
        NUM_CLASSES,
        7,
        num_denoising=2 * count,
        label_noise_ratio=ratio,
        generator=generator(6),
    )
    noised = group.labels[0].view(group.num_groups, 2, count)  # 2 groups x pos/neg x GT
    assert bool((noised >= 0).all() and (noised < NUM_CLASSES).all())  # no padding here
    # Flipped with probability ratio / 2 to a uniform class, which may be the same one.
    expected = ratio * 0.5 * (1 - 1 / NUM_CLASSES)
    changed = (noised != labels).float()
    assert changed.mean().item() == pytest.approx(expected, abs=0.015)
    assert changed[:, 1].mean().item() == pytest.approx(expected, abs=0.02)  # negatives too
    clean = make_denoising_group(targets, embedding(), NUM_CLASSES, 7, label_noise_ratio=0.0)
    assert bool((clean.labels[0].view(-1, count) == labels).all())


def test_positive_index_and_padding() -> None:
    emb = embedding()
    group = make_denoising_group(
        TARGETS, emb, NUM_CLASSES, 7, num_denoising=10, label_noise_ratio=0.0, box_noise_scale=0.0
    )
    size, half = group.group_size, group.group_size // 2
    for b, (query, target) in enumerate(group.positive_index):
        n = len(TARGETS[b]["labels"])
        assert query.dtype == target.dtype == torch.int64 and query.device.type == "cpu"
        expected = [(g * size + j, j) for g in range(group.num_groups) for j in range(n)]
        assert list(zip(query.tolist(), target.tolist(), strict=True)) == expected
        # without noise a positive is its GT exactly
        assert torch.equal(group.labels[b, query], TARGETS[b]["labels"][target])
        torch.testing.assert_close(group.anchors[b, query], TARGETS[b]["boxes"][target])
        slot = torch.arange(group.num_denoising) % size  # [N]
        gt_of_slot = slot % half
        padding = gt_of_slot >= n
        assert bool((group.labels[b, padding] == NUM_CLASSES).all())
        assert bool((group.labels[b, ~padding] < NUM_CLASSES).all())
        torch.testing.assert_close(
            group.content[b, padding], emb.weight[NUM_CLASSES].expand(int(padding.sum()), DIM)
        )
        assert not set(query.tolist()) & set(torch.nonzero(padding).flatten().tolist())
        assert not set(query.tolist()) & set(torch.nonzero(slot >= half).flatten().tolist())


@pytest.mark.parametrize("dn_sees_matching", [True, False])
def test_attn_mask_matches_naive_rules(dn_sees_matching: bool) -> None:
    n, q, size = 12, 5, 4
    mask = denoising_attn_mask(n, q, size, dn_sees_matching)
    assert torch.equal(mask, naive_mask(n, q, size, dn_sees_matching))
    assert bool(mask[n:, :n].all()) and not bool(mask[n:, n:].any())  # matching: no DN
    for g in range(n // size):
        rows = slice(g * size, (g + 1) * size)
        assert not bool(mask[rows, rows].any())  # a group sees itself
        assert int(mask[rows, :n].sum()) == size * (n - size)  # and no other group
    assert bool(mask[:n, n:].all()) != dn_sees_matching


def attend(mha: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return mha(x, x, x, attn_mask=mask, need_weights=False)[0]


@pytest.mark.parametrize("dn_sees_matching", [True, False])
def test_self_attention_isolation(dn_sees_matching: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(DIM, 2, batch_first=True).eval()
    batch, q = 2, 6
    group = make_denoising_group(
        TARGETS[:2],
        embedding(),
        NUM_CLASSES,
        q,
        num_denoising=6,
        generator=generator(7),
        dn_sees_matching=dn_sees_matching,
    )
    n, size = group.num_denoising, group.group_size
    dn = torch.randn(batch, n, DIM, requires_grad=True)
    main = torch.randn(batch, q, DIM, requires_grad=True)
    out = attend(mha, torch.cat([dn, main], 1), group.attn_mask)  # [B, N+Q, D]
    dn_out, main_out = group.split(out)

    # The matching queries' outputs do not change when the denoising queries are appended.
    torch.testing.assert_close(main_out, attend(mha, main, None), rtol=1e-5, atol=1e-6)
    # Nothing flows from the denoising inputs into the matching outputs.
    (grad_dn,) = torch.autograd.grad(main_out.sum(), dn, retain_graph=True)
    assert torch.equal(grad_dn, torch.zeros_like(grad_dn))
    # Group 0's outputs depend on group 0's inputs only.
    (grad_dn,) = torch.autograd.grad(dn_out[:, :size].sum(), dn, retain_graph=True)
    assert grad_dn[:, :size].abs().sum() > 0 and torch.equal(
        grad_dn[:, size:], torch.zeros_like(grad_dn[:, size:])
    )
    # The denoising outputs reach the matching inputs only if they may attend to them (the
    # reference's choice): the DN loss then also trains the matching queries as keys/values.
    (grad_main,) = torch.autograd.grad(dn_out.sum(), main)
    assert bool(grad_main.abs().sum() > 0) == dn_sees_matching


def stage_outputs(logits: torch.Tensor, boxes: torch.Tensor) -> StageOutputs:
    num_stages, batch, queries = logits.shape[:3]
    return StageOutputs(
        logits=logits,
        boxes=boxes,
        hidden=torch.zeros(num_stages, batch, queries, DIM),
        references=None,
        init_content=torch.zeros(batch, queries, DIM),
        init_position=torch.zeros(batch, queries, 4),
    )


def test_losses_with_the_set_criterion() -> None:
    group = make_denoising_group(TARGETS, embedding(), NUM_CLASSES, 7, generator=generator(8))
    num_stages, batch, n = 2, len(TARGETS), group.num_denoising
    logits = torch.randn(num_stages, batch, n, NUM_CLASSES, generator=generator(9))
    boxes = group.anchors[None].repeat(num_stages, 1, 1, 1)  # [L, B, N, 4], noised: box loss > 0
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher())

    noisy = denoising_losses(criterion, stage_outputs(logits, boxes), group, TARGETS, 4.0)
    assert sorted(noisy) == sorted(
        f"dn_loss_{name}_s{k}" for k in range(num_stages) for name in ("cls", "bbox", "giou")
    )
    assert noisy["dn_loss_bbox_s0"] > 0 and noisy["dn_loss_giou_s0"] > 0

    # Positives predicting their GT exactly: box terms vanish, classification stays finite.
    for b, (query, target) in enumerate(group.positive_index):
        boxes[:, b, query] = TARGETS[b]["boxes"][target]
    losses = denoising_losses(criterion, stage_outputs(logits, boxes), group, TARGETS, 4.0)
    for k in range(num_stages):
        assert torch.isfinite(losses[f"dn_loss_cls_s{k}"]) and losses[f"dn_loss_cls_s{k}"] > 0
        assert losses[f"dn_loss_bbox_s{k}"].abs() < 1e-6
        assert losses[f"dn_loss_giou_s{k}"].abs() < 1e-5  # float32 GIoU rounding

    # The fixed assignment is used on every stage, normalised by num_boxes * num_groups.
    plain, used = criterion(
        stage_outputs(logits, boxes), TARGETS, indices=group.positive_index, num_boxes=4.0
    )
    assert all(
        torch.equal(q, pq) and torch.equal(t, pt)
        for stage in used
        for (q, t), (pq, pt) in zip(stage, group.positive_index, strict=True)
    )
    torch.testing.assert_close(losses["dn_loss_cls_s1"], plain["loss_cls_s1"] / group.num_groups)
