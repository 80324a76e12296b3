import pytest
import torch
import torch.nn.functional as F

from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.criterion import SetCriterion, encoder_proposal_losses, total
from detr_models.deformable_attention import MultiScaleDeformableAttention
from detr_models.layers import MLP
from detr_models.matcher import HungarianMatcher
from detr_models.output import QueryGroup
from tests.overfit import overfit

VARIANTS = {
    "plain": {},
    "box_refine": {"box_refine": True},
    "two_stage": {"two_stage": True, "box_refine": True},
    "two_stage_reference": {
        "two_stage": True,
        "box_refine": True,
        "two_stage_queries": "reference",
    },
    "dab_deformable": {"anchor_queries": True, "box_refine": True},
}


def _model(variant, **overrides):
    torch.manual_seed(0)
    config = tiny_config(
        "deformable_detr", levels=["C3", "C4", "C5"], **{**VARIANTS[variant], **overrides}
    )
    return build_model(config)


def _images(batch=2, h=128, w=128):
    torch.manual_seed(1)
    mask = torch.zeros(batch, h, w, dtype=torch.bool)
    mask[-1, :, w // 2 :] = True
    return torch.randn(batch, 3, h, w), mask


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("train", [True, False])
def test_output_shapes(variant, train):
    model = _model(variant).train(train)
    images, mask = _images()
    out = model(images, mask)
    L, B, Q, D = 2, 2, 16, 64
    assert out.logits.shape == (L, B, Q, 3) and out.boxes.shape == (L, B, Q, 4)
    assert out.hidden.shape == (L, B, Q, D) and out.references.shape == (L, B, Q, 4)
    assert ((out.boxes > 0) & (out.boxes < 1)).all()
    anchors = variant in ("two_stage", "two_stage_reference", "dab_deformable")
    assert out.init_position.shape == (B, Q, 4 if anchors else D)
    assert out.spatial_shapes.tolist() == [[16, 16], [8, 8], [4, 4], [2, 2]]
    assert (
        out.memory.shape == (B, 340, D)
        and out.memory_mask[1].any()
        and not out.memory_mask[0].any()
    )
    assert len(out.features) == 4 and out.features[3].shape == (B, D, 2, 2)
    if variant.startswith("two_stage"):
        selected = out.extras["selected_tokens"]
        assert selected.shape == (B, Q) and selected.dtype == torch.long
        assert not out.memory_mask.gather(1, selected).any()  # never a padded token
        # the reference ranks tokens by one class-agnostic logit
        columns = 1 if variant == "two_stage_reference" else 3
        assert out.extras["enc_logits"].shape == (B, 340, columns)
    if variant != "plain":
        # refinement: the next stage starts from this stage's boxes
        assert torch.allclose(out.references[1], out.boxes[0].detach())
    else:
        assert torch.equal(out.references[0], out.references[1])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padding_does_not_change_an_image(variant):
    model = _model(variant).eval()
    images, _ = _images(batch=1, h=128, w=128)
    with torch.no_grad():
        maps = model.backbone(images)
        alone = model.encode_features(maps, torch.zeros(1, 128, 128, dtype=torch.bool))
        # the same feature maps placed in a larger, padded batch (sizes keep strides aligned)
        padded_maps = [F.pad(m, (0, m.shape[-1] // 2, 0, m.shape[-2])) for m in maps]
        mask = torch.ones(1, 256, 192, dtype=torch.bool)
        mask[:, :128, :128] = False
        padded = model.encode_features(padded_maps, mask)
        for a, b in zip(alone["features"], padded["features"], strict=True):
            assert torch.allclose(a, b[..., : a.shape[-2], : a.shape[-1]], atol=1e-5)
        out_a = _decode(model, alone)
        out_b = _decode(model, padded)
    assert torch.allclose(out_a[0], out_b[0], atol=1e-4) and torch.allclose(
        out_a[1], out_b[1], atol=1e-5
    )


def _decode(model, enc):
    if model.proposals is not None:
        content, position, _ = model.proposals(
            enc["memory"], enc["memory_mask"], enc["spatial_shapes"], model.num_queries
        )
    else:
        content, position = model.main_queries(1)
    dec = model.decode(content, position, enc)
    return model.class_head(dec.hidden), dec.boxes


def _group(model, size=5):
    g = torch.Generator().manual_seed(3)
    content = torch.randn(2, size, model.hidden_dim, generator=g)
    if model.query_kind == "anchor":
        return QueryGroup("g", content, torch.rand(2, size, 4, generator=g) * 0.5 + 0.25)
    return QueryGroup("g", content, torch.randn(2, size, model.hidden_dim, generator=g))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_groups_leave_main_queries_alone_and_act_as_model_queries(variant):
    model = _model(variant, dropout=0.1).eval()
    images, mask = _images()
    plain = model(images, mask)
    grouped = model(images, mask, [_group(model)])
    for field in ("logits", "boxes", "hidden"):
        assert torch.allclose(getattr(plain, field), getattr(grouped, field), atol=1e-5)
    assert grouped.groups["g"].boxes.shape == (2, 2, 5, 4)
    # the model's own first-stage queries, handed in as a group, reproduce the main outputs
    same = QueryGroup("same", plain.init_content, plain.init_position)
    echoed = model(images, mask, [same]).groups["same"]
    for field in ("logits", "boxes", "hidden"):
        assert torch.allclose(getattr(echoed, field), getattr(plain, field), atol=1e-4), field


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_reach_every_parameter(variant):
    model = _model(variant).train()
    # the standard init zeroes the sampling-offset and attention-weight projections and the last
    # box-head layers, which blocks gradients behind them on the very first step only
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.sampling_offsets.weight.normal_(std=0.01)
                module.attention_weights.weight.normal_(std=0.01)
            if isinstance(module, MLP):
                module.layers[-1].weight.normal_(std=0.01)
    images, mask = _images()
    targets = [
        {
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[0.2, 0.5, 0.2, 0.3]]), "labels": torch.tensor([1])},
    ]
    criterion = SetCriterion(3, HungarianMatcher())
    out = model(images, mask)
    losses, _ = criterion(out, targets)
    losses.update(encoder_proposal_losses(criterion, out, targets))
    assert any(k.startswith("enc_") for k in losses) == variant.startswith("two_stage")
    total(losses).backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert missing == []


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_overfits_synthetic_images(variant, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "shapes-cache"
    ap50, losses = overfit(
        "deformable_detr", cache, count=4, steps=150, levels=["C3", "C4", "C5"], **VARIANTS[variant]
    )
    assert losses[-1] < 0.1 * losses[0]
    assert ap50 >= 0.9, f"{variant}: AP50 {ap50:.3f} after 150 steps on 4 images"
