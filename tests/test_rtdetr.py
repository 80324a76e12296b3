"""RT-DETRv2: the DetrOutput contract, contrastive denoising kept apart from the matching
queries, the varifocal loss against a hand computation, and learning."""

from __future__ import annotations

import math

import pytest
import torch

from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.criterion import SetCriterion
from detr_models.matcher import HungarianMatcher
from tests.overfit import overfit

TARGETS = [
    {
        "labels": torch.tensor([0, 2]),
        "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]]),
    },
    {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
]


def _model(**overrides):
    torch.manual_seed(0)
    config = tiny_config(
        "rtdetr_v2", levels=["C3", "C4", "C5"], encoder_ffn_dim=128, num_denoising=20, **overrides
    )
    return build_model(config), config


def _images():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 64, 96, generator=generator), torch.zeros(2, 64, 96, dtype=torch.bool)


@pytest.mark.parametrize("train", [False, True])
def test_output_contract(train):
    model, config = _model()
    model.train(train)
    images, mask = _images()
    out = model(images, mask)
    layers, queries = config.decoder_layers, config.num_queries
    assert out.logits.shape == (layers, 2, queries, 3)
    assert out.boxes.shape == out.references.shape == (layers, 2, queries, 4)
    assert out.hidden.shape == (layers, 2, queries, config.hidden_dim)
    assert ((out.boxes > 0) & (out.boxes < 1)).all()
    assert [f.shape[-2:] for f in out.features] == [(8, 12), (4, 6), (2, 3)]
    assert out.memory.shape == (2, 8 * 12 + 4 * 6 + 2 * 3, config.hidden_dim)
    assert out.init_content.shape == (2, queries, config.hidden_dim)
    assert out.init_position.shape == (2, queries, 4)  # anchors of the selected tokens
    assert out.extras["enc_logits"].shape == (2, queries, 3)
    assert out.extras["selected_tokens"].shape == (2, queries)
    # each stage starts from the box the previous one predicted
    assert torch.allclose(out.references[1], out.boxes[0].detach())
    assert out.denoising is None  # no targets given


def test_varifocal_loss_matches_a_hand_computation():
    logits = torch.tensor([[[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]]])  # [B=1,Q=3,C=2]
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]]])
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]])}
    criterion = SetCriterion(2, HungarianMatcher(), classification="varifocal")
    assignment = [(torch.tensor([0]), torch.tensor([0]))]
    cls, _, _ = criterion._stage_losses(logits[0:1], boxes, [target], assignment, None, 1.0)
    iou = (0.2 * 0.4) / (0.4 * 0.4)  # the GT box lies inside query 0's box
    expected = 0.0
    for q in range(3):
        for c in range(2):
            x = logits[0, q, c].item()
            p = 1 / (1 + math.exp(-x))
            positive = q == 0 and c == 1
            t = iou if positive else 0.0
            weight = t if positive else 0.75 * p**2
            expected += -weight * (t * math.log(p) + (1 - t) * math.log(1 - p))
    assert cls.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_overfits_synthetic_images(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "shapes-cache"
    ap50, losses = overfit(
        "rtdetr_v2",
        cache,
        count=4,
        steps=150,
        criterion_options={"classification": "varifocal", "weight_cls": 1.0},
        levels=["C3", "C4", "C5"],
        encoder_ffn_dim=128,
        num_denoising=20,
    )
    assert losses[-1] < 0.3 * losses[0]
    assert ap50 >= 0.9, f"AP50 {ap50:.3f} after 150 steps on 4 images"
