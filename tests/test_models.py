import pytest
import torch

from detr_models.build import build_model
from detr_models.config import DetrConfig, tiny_config
from detr_models.output import QueryGroup

ARCHITECTURES = ["detr", "conditional_detr", "dab_detr"]
REF_DIM = {"detr": None, "conditional_detr": 2, "dab_detr": 4}


def _inputs(batch=2, h=64, w=96):
    torch.manual_seed(0)
    images = torch.randn(batch, 3, h, w)
    mask = torch.zeros(batch, h, w, dtype=torch.bool)
    mask[1, :, 80:] = True
    mask[1, 48:, :] = True
    return images, mask


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("with_mask", [True, False])
def test_output_shapes(arch, train, with_mask):
    config = tiny_config(arch, num_classes=5, levels=["C4", "C5"], decoder_layers=3)
    model = build_model(config).train(train)
    images, mask = _inputs()
    out = model(images, mask if with_mask else None)
    L, B, Q, D, C = 3, 2, config.num_queries, config.hidden_dim, 5
    assert out.logits.shape == (L, B, Q, C) and out.logits.dtype == torch.float32
    assert out.boxes.shape == (L, B, Q, 4)
    assert ((out.boxes > 0) & (out.boxes < 1)).all()
    assert out.hidden.shape == (L, B, Q, D)
    if REF_DIM[arch] is None:
        assert out.references is None
    else:
        assert out.references.shape == (L, B, Q, REF_DIM[arch])
    assert out.init_content.shape == (B, Q, D)
    assert out.init_position.shape == (B, Q, 4 if arch == "dab_detr" else D)
    assert [tuple(f.shape) for f in out.features] == [(B, D, 4, 6), (B, D, 2, 3)]
    assert [tuple(m.shape) for m in out.feature_masks] == [(B, 4, 6), (B, 2, 3)]
    assert (
        out.spatial_shapes.tolist() == [[4, 6], [2, 3]] and out.spatial_shapes.dtype == torch.long
    )
    assert out.memory.shape == (B, 24 + 6, D)
    assert out.memory_mask.shape == (B, 30) and out.memory_mask.dtype == torch.bool
    assert out.memory_mask[1].any() == with_mask and not out.memory_mask[0].any()
    assert out.groups == {}


def _group_for(model, arch, size=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(2, size, model.hidden_dim, generator=g)
    if arch == "dab_detr":
        position = torch.rand(2, size, 4, generator=g) * 0.5 + 0.25
    else:
        position = torch.randn(2, size, model.hidden_dim, generator=g)
    return QueryGroup("teacher", content, position)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_groups_do_not_change_main_queries(arch):
    model = build_model(tiny_config(arch, dropout=0.1)).eval()
    images, mask = _inputs()
    plain = model(images, mask)
    other = QueryGroup(
        "aux", *(_group_for(model, arch, 3, seed=2).content, _group_for(model, arch, 3, 2).position)
    )
    grouped = model(images, mask, [_group_for(model, arch), other])
    for field in ("logits", "boxes", "hidden"):
        assert torch.allclose(getattr(plain, field), getattr(grouped, field), atol=1e-5)
    assert set(grouped.groups) == {"teacher", "aux"}
    assert grouped.groups["teacher"].logits.shape == (2, 2, 5, 3)
    assert grouped.groups["aux"].boxes.shape == (2, 2, 3, 4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_group_equals_running_it_as_the_model_queries(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch)).eval()
    images, mask = _inputs()
    group = _group_for(model, arch, size=model.num_queries)
    group.content = torch.zeros_like(group.content)  # the model's own content queries start at 0
    group.position = group.position[:1].expand(2, -1, -1)  # one set for the batch, like the model's
    grouped = model(images, mask, [group]).groups["teacher"]
    with torch.no_grad():
        weight = group.position[0]
        model.query_position.weight.copy_(weight.logit() if arch == "dab_detr" else weight)
    alone = model(images, mask)
    for field in ("logits", "boxes", "hidden"):
        assert torch.allclose(getattr(grouped, field), getattr(alone, field), atol=1e-4), field
    if alone.references is not None:
        assert torch.allclose(grouped.references, alone.references, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_group_validation(arch):
    model = build_model(tiny_config(arch)).eval()
    images, _ = _inputs()
    bad = QueryGroup("bad", torch.zeros(4, model.hidden_dim), torch.zeros(4, 7))
    with pytest.raises(ValueError, match="query group 'bad'"):
        model(images, None, [bad])
    good = _group_for(model, arch)
    with pytest.raises(ValueError, match="unique"):
        model(images, None, [good, good])


def test_build_model_rejects_bad_config():
    with pytest.raises(ValueError, match="unknown architecture 'detrr'"):
        build_model({"architecture": "detrr"})
    with pytest.raises(ValueError, match=r"unknown model config field\(s\) \['hiden_dim'\]"):
        build_model({"architecture": "detr", "hiden_dim": 3})
    with pytest.raises(ValueError, match="divisible"):
        build_model(tiny_config("detr", hidden_dim=60, num_heads=8))


def test_resnet_backbone_levels_and_frozen_stages():
    config = DetrConfig(
        backbone="resnet18",
        levels=["C3", "C4", "C5"],
        hidden_dim=32,
        num_heads=4,
        encoder_layers=1,
        decoder_layers=1,
        ffn_dim=32,
        num_queries=4,
        num_classes=2,
        frozen_stages=1,
    )
    model = build_model(config)
    assert model.backbone.channels == [128, 256, 512]
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert any(n.startswith("stem") for n in frozen) and any(
        n.startswith("stages.0") for n in frozen
    )
    assert not any(n.startswith("stages.1") for n in frozen)
    out = model(torch.randn(1, 3, 64, 64))
    assert out.spatial_shapes.tolist() == [[8, 8], [4, 4], [2, 2]]


def test_backbone_weights_file(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "r18.pth"
    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    config = DetrConfig(
        backbone="resnet18",
        backbone_weights=str(path),
        hidden_dim=32,
        num_heads=4,
        encoder_layers=1,
        decoder_layers=1,
        ffn_dim=32,
        num_queries=4,
        num_classes=2,
    )
    model = build_model(config)
    assert torch.equal(model.backbone.stem[0].weight, reference.conv1.weight)
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.pth is not a readable torch state dict"):
        build_model({**config.model_dump(), "backbone_weights": str(tmp_path / "bad.pth")})
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        build_model({**config.model_dump(), "backbone_weights": str(tmp_path / "missing.pth")})


def test_every_architecture_has_a_config_and_a_builder():
    from detr_models.build import BUILDERS
    from detr_models.config import ARCHITECTURES

    assert set(BUILDERS) == set(ARCHITECTURES)
    for name, cls in ARCHITECTURES.items():
        assert cls().architecture == name


def test_config_facts_and_model_files_written_before_the_split():
    from detr_models.config import DeformableDetrConfig, model_config_from_dict

    two_stage = tiny_config("deformable_detr", levels=["C4", "C5"], two_stage=True)
    assert two_stage.query_kind == "anchor" and two_stage.feature_strides == [16, 32, 64, 128]
    assert tiny_config("dab_detr").query_kind == "anchor"
    assert tiny_config("conditional_detr", levels=["C5", "C3"]).feature_strides == [8, 32]
    # older files stored every Deformable field for every architecture: still loadable
    old = {**tiny_config("detr").model_dump(), "num_points": 4, "box_refine": False}
    assert model_config_from_dict(old) == tiny_config("detr")
    with pytest.raises(ValueError, match="num_feature_levels 2 is less than the 3"):
        DeformableDetrConfig(num_feature_levels=2)
    with pytest.raises(ValueError, match="num_classes is unknown"):
        build_model(DeformableDetrConfig())
