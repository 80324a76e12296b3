"""The official repos' checkpoint format (facebookresearch/detr, fundamentalvision/
Deformable-DETR, Atten4Vis/ConditionalDETR, IDEA-Research/DAB-DETR): their weight names, both
ways, and `.pth` files that import exactly."""

from __future__ import annotations

import argparse

import pytest
import torch

from detr_models.build import build_model
from detr_models.config import REFERENCE_OPTIONS, model_config_from_dict
from detr_models.pretrained.official_keys import official_to_ours, ours_to_official
from orchestrator.cli.main import main
from orchestrator.training.model_source import load_model

SMALL = {
    "backbone": "resnet18",
    "hidden_dim": 64,
    "num_heads": 4,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "ffn_dim": 128,
    "num_queries": 12,
    "num_classes": 91,
    "dropout": 0.0,
}
VARIANTS = {
    "detr": {"architecture": "detr", "levels": ["C5"]},
    "deformable": {"architecture": "deformable_detr", "levels": ["C3", "C4", "C5"]},
    "deformable_refine": {
        "architecture": "deformable_detr",
        "levels": ["C3", "C4", "C5"],
        "box_refine": True,
    },
    "deformable_two_stage": {
        "architecture": "deformable_detr",
        "levels": ["C3", "C4", "C5"],
        "box_refine": True,
        "two_stage": True,
    },
    "conditional": {"architecture": "conditional_detr", "levels": ["C5"]},
    "dab": {"architecture": "dab_detr", "levels": ["C5"]},
}
# names as the official code's state_dict() writes them
OFFICIAL_NAMES = {
    "detr": [
        "backbone.0.body.layer1.0.conv1.weight",
        "backbone.0.body.bn1.running_var",
        "input_proj.weight",
        "query_embed.weight",
        "transformer.encoder.layers.0.self_attn.in_proj_weight",
        "transformer.encoder.layers.1.norm2.bias",
        "transformer.decoder.layers.0.multihead_attn.in_proj_bias",
        "transformer.decoder.layers.1.norm3.weight",
        "transformer.decoder.norm.weight",
        "class_embed.weight",
        "bbox_embed.layers.2.bias",
    ],
    "deformable": [
        "transformer.level_embed",
        "input_proj.0.1.weight",
        "input_proj.3.0.weight",
        "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
        "transformer.decoder.layers.1.cross_attn.value_proj.bias",
        "transformer.decoder.layers.0.self_attn.in_proj_weight",
        "transformer.reference_points.weight",
        "query_embed.weight",
        "class_embed.1.weight",
        "bbox_embed.1.layers.0.weight",
    ],
}
OFFICIAL_NAMES["deformable_refine"] = [
    *OFFICIAL_NAMES["deformable"],
    "transformer.decoder.bbox_embed.1.layers.2.weight",
]
OFFICIAL_NAMES["deformable_two_stage"] = [
    *(
        n
        for n in OFFICIAL_NAMES["deformable_refine"]
        if n not in ("query_embed.weight", "transformer.reference_points.weight")
    ),
    "transformer.enc_output.weight",
    "transformer.enc_output_norm.bias",
    "transformer.pos_trans.weight",
    "transformer.pos_trans_norm.weight",
    "class_embed.2.bias",
    "bbox_embed.2.layers.2.weight",
    "transformer.decoder.class_embed.2.weight",
]
_CONDITIONAL_DECODER = [
    "input_proj.weight",
    "transformer.encoder.layers.1.self_attn.in_proj_weight",
    "transformer.encoder.layers.0.self_attn.out_proj.bias",
    "transformer.encoder.layers.0.norm2.weight",
    "transformer.decoder.layers.0.sa_qcontent_proj.weight",
    "transformer.decoder.layers.1.sa_kpos_proj.bias",
    "transformer.decoder.layers.1.sa_v_proj.weight",
    "transformer.decoder.layers.0.self_attn.out_proj.weight",
    "transformer.decoder.layers.0.ca_qpos_proj.weight",
    "transformer.decoder.layers.1.ca_qpos_sine_proj.weight",
    "transformer.decoder.layers.1.ca_kcontent_proj.bias",
    "transformer.decoder.layers.1.cross_attn.out_proj.weight",
    "transformer.decoder.layers.1.norm3.bias",
    "transformer.decoder.norm.weight",
    "transformer.decoder.query_scale.layers.1.weight",
    "transformer.decoder.ref_point_head.layers.0.weight",
    "class_embed.weight",
    "bbox_embed.layers.2.weight",
]
OFFICIAL_NAMES["conditional"] = [*_CONDITIONAL_DECODER, "query_embed.weight"]
OFFICIAL_NAMES["dab"] = [
    *_CONDITIONAL_DECODER,
    "refpoint_embed.weight",
    "transformer.encoder.query_scale.layers.0.weight",
    "transformer.encoder.layers.1.activation.weight",
    "transformer.decoder.layers.0.activation.weight",
    "transformer.decoder.ref_anchor_head.layers.1.bias",
    "transformer.decoder.bbox_embed.layers.2.weight",
]
# names only the variant with more of a feature has; the official code does not create them
ABSENT = {
    "conditional": ["transformer.decoder.layers.1.ca_qpos_proj.weight"],
    "dab": ["transformer.decoder.layers.1.ca_qpos_proj.weight", "query_embed.weight"],
}
FORMATS = {
    "detr": "detr",
    "conditional": "conditional-detr",
    "dab": "dab-detr",
}


def _model(variant: str):
    data = {**SMALL, **VARIANTS[variant]}
    config = model_config_from_dict({**data, **REFERENCE_OPTIONS[data["architecture"]]})
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():  # no weight at its initial value
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model, config


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_official_names_round_trip(variant):
    model, config = _model(variant)
    refine = getattr(config, "box_refine", False)
    official = ours_to_official(model.state_dict(), config.architecture, refine, stages=2)
    assert set(OFFICIAL_NAMES[variant]) <= set(official)
    assert not set(ABSENT.get(variant, [])) & set(official)
    back, unmapped = official_to_ours(official, config.architecture, config.hidden_dim, refine)
    assert unmapped == []
    if getattr(config, "two_stage", False):  # queries come from the encoder's tokens
        assert "query_embed.weight" not in official
    own = model.state_dict()
    assert back.keys() == own.keys()
    assert all(torch.equal(back[k], own[k]) for k in own)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_an_official_pth_imports_exactly(tmp_path, variant):
    model, config = _model(variant)
    refine = getattr(config, "box_refine", False)
    official = ours_to_official(model.state_dict(), config.architecture, refine, stages=2)
    # what the releases carry
    args = argparse.Namespace(nheads=4, dropout=0.0, lr=2e-4, num_queries=12)
    if variant == "dab":  # DAB-DETR's own argument names
        args.pe_temperatureH = args.pe_temperatureW = 20
        args.transformer_activation, args.num_patterns = "prelu", 0
    torch.save({"model": official, "args": args, "epoch": 49}, tmp_path / "release.pth")
    out = tmp_path / "model.pt"
    fmt = ["--format", FORMATS[variant]] if variant in FORMATS else []
    assert main(["import", str(tmp_path / "release.pth"), "--out", str(out), *fmt]) == 0
    imported, payload = load_model(str(out))
    assert payload["config"] == config.model_dump(mode="json")
    assert payload["extra"]["class_names"][1] == "person"
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 70:] = True
    with torch.no_grad():
        expected, found = model(images, mask), imported.eval()(images, mask)
    assert torch.equal(found.logits, expected.logits) and torch.equal(found.boxes, expected.boxes)


class Payload:
    def __reduce__(self):
        return (print, ("planted code ran",))


def test_a_pth_holding_other_objects_is_refused_unread(tmp_path, capsys):
    model, config = _model("detr")
    official = ours_to_official(model.state_dict(), config.architecture)
    torch.save({"model": official, "extra": Payload()}, tmp_path / "planted.pth")
    out = tmp_path / "model.pt"
    assert main(["import", str(tmp_path / "planted.pth"), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "planted code ran" not in captured.out + captured.err
    assert "refused, never unpickled" in captured.err and not out.exists()


def test_the_format_flag_is_checked_against_the_file(tmp_path, capsys):
    model, _config = _model("detr")
    torch.save({"model": ours_to_official(model.state_dict(), "detr")}, tmp_path / "detr.pth")
    args = ["import", str(tmp_path / "detr.pth"), "--out", str(tmp_path / "m.pt")]
    assert main([*args, "--format", "deformable-detr"]) == 2
    assert "--format deformable-detr, but the file holds a detr" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"transformer.patterns.weight": torch.zeros(3, 64)}, "num_patterns > 0"),
        ({"transformer.decoder.layers.1.ca_qpos_proj.weight": torch.zeros(64, 64)}, "keep_query"),
    ],
)
def test_dab_variants_we_do_not_represent_are_refused(tmp_path, capsys, extra, message):
    model, config = _model("dab")
    official = {**ours_to_official(model.state_dict(), config.architecture), **extra}
    torch.save({"model": official}, tmp_path / "dab.pth")
    out = tmp_path / "m.pt"
    assert main(["import", str(tmp_path / "dab.pth"), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
