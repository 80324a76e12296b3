"""Contrastive denoising in the models that have it (RT-DETRv2, DINO): training only, its
outputs apart, the matching queries and distillation groups blind to it, and its losses."""

from __future__ import annotations

import pytest
import torch

from detr_models.batch import Batch
from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.criterion import SetCriterion, total
from detr_models.matcher import HungarianMatcher
from detr_models.output import QueryGroup
from distill.objective import DetectionObjective, Progress
from tests.overfit import overfit

TARGETS = [
    {
        "labels": torch.tensor([0, 2]),
        "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]]),
    },
    {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
]
MODELS = {
    "rtdetr_v2": {"architecture": "rtdetr_v2", "encoder_ffn_dim": 128},
    "dino": {  # Deformable DETR + CDN + mixed query selection + look forward twice
        "architecture": "deformable_detr",
        "num_feature_levels": 4,
        "box_refine": True,
        "two_stage": True,
        "two_stage_queries": "mixed",
        "look_forward_twice": True,
    },
}


def _model(kind: str):
    torch.manual_seed(0)
    options = dict(MODELS[kind])
    config = tiny_config(
        options.pop("architecture"), levels=["C3", "C4", "C5"], num_denoising=20, **options
    )
    return build_model(config), config


def _images():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 64, 96, generator=generator), torch.zeros(2, 64, 96, dtype=torch.bool)


@pytest.mark.parametrize("kind", list(MODELS))
def test_denoising_runs_in_training_only_and_leaves_the_matching_queries_alone(kind):
    model, _ = _model(kind)
    images, mask = _images()
    model.eval()
    with torch.no_grad():
        plain = model(images, mask)
        given = model(images, mask, targets=TARGETS)
    assert given.denoising is None and torch.equal(given.logits, plain.logits)
    model.train()  # dropout 0: training differs only by the batch statistics, the same here
    torch.manual_seed(1)
    without = model(images, mask)
    with_dn = model(images, mask, targets=TARGETS)
    group = with_dn.denoising_group
    assert with_dn.denoising.logits.shape[2] == group.num_denoising == 2 * 20  # pos + neg
    assert torch.allclose(with_dn.logits, without.logits, atol=1e-6)
    assert torch.allclose(with_dn.boxes, without.boxes, atol=1e-6)
    # nothing flows from the denoising queries into the matching queries' outputs
    model.zero_grad()
    (with_dn.logits.sum() + with_dn.boxes.sum()).backward()
    assert model.denoising.label_embedding.weight.grad.abs().max() == 0
    # while their own outputs do depend on their labels
    model.zero_grad()
    with_dn = model(images, mask, targets=TARGETS)
    with_dn.denoising.logits.sum().backward()
    assert model.denoising.label_embedding.weight.grad.abs().max() > 0


@pytest.mark.parametrize("kind", list(MODELS))
def test_denoising_and_distillation_groups_share_a_pass_without_seeing_each_other(kind):
    model, config = _model(kind)
    images, mask = _images()
    model.train()
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.3]])
    group = QueryGroup("extra", torch.randn(2, config.hidden_dim), anchors)
    alone = model(images, mask, [group])
    both = model(images, mask, [group], targets=TARGETS)
    assert torch.allclose(both.logits, alone.logits, atol=1e-6)
    assert torch.allclose(both.groups["extra"].logits, alone.groups["extra"].logits, atol=1e-6)
    assert both.denoising is not None and "extra" in both.groups


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_detection_objective_trains_denoising_and_encoder_queries(kind):
    model, _ = _model(kind)
    images, mask = _images()
    criterion = SetCriterion(3, HungarianMatcher(), classification="varifocal", weight_cls=1.0)
    losses, _ = DetectionObjective(criterion)(
        model.train(), Batch(images, mask, TARGETS), Progress(0, 0, 1, 1)
    )
    assert {"dn_loss_cls_s0", "dn_loss_bbox_s1", "enc_loss_giou_s0", "loss_cls_s1"} <= set(losses)
    total(losses).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_denoising_needs_anchor_queries():
    with pytest.raises(ValueError, match="anchor-box queries"):
        tiny_config("deformable_detr", levels=["C3", "C4", "C5"], num_denoising=10)


@pytest.mark.slow
def test_dino_overfits_synthetic_images(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "shapes-cache"
    options = {k: v for k, v in MODELS["dino"].items() if k != "architecture"}
    ap50, losses = overfit(
        "deformable_detr",
        cache,
        count=4,
        steps=150,
        levels=["C3", "C4", "C5"],
        num_denoising=20,
        **options,
    )
    assert losses[-1] < 0.3 * losses[0]
    assert ap50 >= 0.9, f"AP50 {ap50:.3f} after 150 steps on 4 images"
