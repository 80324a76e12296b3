"""The official RT-DETRv2 release format (lyuwenyu/RT-DETR, rtdetrv2_pytorch): its weight
names, both ways, and `.pth` files (raw and EMA training checkpoints) that import exactly."""

from __future__ import annotations

import logging

import pytest
import torch

from detr_models.build import build_model
from detr_models.config import model_config_from_dict
from detr_models.pretrained.coco_names import COCO_CATEGORY_IDS
from detr_models.pretrained.official import config_from_official
from detr_models.pretrained.official_keys_rtdetr import official_to_ours, ours_to_official
from orchestrator.cli.main import main
from orchestrator.training.model_source import load_model

SMALL = {
    "architecture": "rtdetr_v2",
    "backbone": "resnet18vd",
    "levels": ["C3", "C4", "C5"],
    "hidden_dim": 64,
    "num_heads": 4,
    "encoder_layers": 1,
    "encoder_ffn_dim": 128,
    "decoder_layers": 2,
    "ffn_dim": 128,
    "expansion": 0.5,
    # a release carries no query count: the import takes the reference's 300
    "num_queries": 300,
    "num_classes": 80,
}
# names as the official code's state_dict() writes them: src/nn/backbone/presnet.py (PResNet),
# src/zoo/rtdetr/hybrid_encoder.py (HybridEncoder), src/zoo/rtdetr/rtdetrv2_decoder.py
# (RTDETRTransformerv2), inside src/zoo/rtdetr/rtdetr.py's RTDETR(backbone, encoder, decoder)
OFFICIAL_NAMES = [
    "backbone.conv1.conv1_1.conv.weight",
    "backbone.conv1.conv1_3.norm.running_var",
    "backbone.res_layers.0.blocks.0.branch2a.conv.weight",
    "backbone.res_layers.0.blocks.1.branch2b.norm.bias",
    "backbone.res_layers.0.blocks.0.short.conv.weight",  # stride 1: a plain ConvNormLayer
    "backbone.res_layers.0.blocks.0.short.norm.running_mean",
    "backbone.res_layers.1.blocks.0.short.conv.conv.weight",  # Sequential(pool, conv)
    "backbone.res_layers.3.blocks.0.short.conv.norm.weight",
    "encoder.input_proj.2.conv.weight",
    "encoder.input_proj.0.norm.running_mean",
    "encoder.encoder.0.layers.0.self_attn.in_proj_weight",
    "encoder.encoder.0.layers.0.self_attn.in_proj_bias",
    "encoder.encoder.0.layers.0.self_attn.out_proj.weight",
    "encoder.encoder.0.layers.0.linear1.weight",
    "encoder.encoder.0.layers.0.norm2.bias",
    "encoder.lateral_convs.1.conv.weight",
    "encoder.fpn_blocks.0.conv1.conv.weight",
    "encoder.fpn_blocks.1.conv3.norm.weight",
    "encoder.fpn_blocks.0.bottlenecks.2.conv1.conv.weight",
    "encoder.downsample_convs.0.norm.bias",
    "encoder.pan_blocks.1.bottlenecks.0.conv2.norm.running_var",
    "decoder.input_proj.2.conv.weight",
    "decoder.input_proj.0.norm.weight",
    "decoder.decoder.layers.0.self_attn.in_proj_weight",
    "decoder.decoder.layers.1.self_attn.out_proj.bias",
    "decoder.decoder.layers.0.cross_attn.sampling_offsets.weight",
    "decoder.decoder.layers.1.cross_attn.attention_weights.bias",
    "decoder.decoder.layers.0.cross_attn.value_proj.weight",
    "decoder.decoder.layers.1.cross_attn.output_proj.weight",
    "decoder.decoder.layers.1.norm3.weight",
    "decoder.query_pos_head.layers.1.weight",
    "decoder.denoising_class_embed.weight",
    "decoder.enc_output.proj.weight",
    "decoder.enc_output.norm.bias",
    "decoder.enc_score_head.weight",
    "decoder.enc_bbox_head.layers.2.bias",
    "decoder.dec_score_head.1.weight",
    "decoder.dec_bbox_head.0.layers.2.weight",
]
# the constants the official model keeps as buffers (its eval size 640x640)
CONSTANTS = {
    "decoder.anchors": (1, 80 * 80 + 40 * 40 + 20 * 20, 4),
    "decoder.valid_mask": (1, 80 * 80 + 40 * 40 + 20 * 20, 1),
    "decoder.decoder.layers.0.cross_attn.num_points_scale": (3 * 4,),
    "decoder.decoder.layers.1.cross_attn.num_points_scale": (3 * 4,),
}


@pytest.fixture(scope="module")
def small():
    """(our model, its config, its weights under the official names); tests copy the dict."""
    config = model_config_from_dict(SMALL)
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():  # no weight or statistic at its initial value
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
    return model, config, ours_to_official(model.state_dict())


def _weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _same_outputs(model, imported) -> bool:
    images = torch.rand(1, 3, 96, 160)  # 315 tokens on C3-C5: enough for 300 queries
    with torch.no_grad():
        expected, found = model(images), imported.eval()(images)
    return torch.equal(found.logits, expected.logits) and torch.equal(found.boxes, expected.boxes)


def test_official_names_round_trip(small):
    model, _config, official = small
    assert set(OFFICIAL_NAMES) <= set(official)
    assert {k: tuple(official[k].shape) for k in CONSTANTS} == CONSTANTS
    assert official["decoder.decoder.layers.0.cross_attn.num_points_scale"].eq(0.25).all()
    assert official["encoder.encoder.0.layers.0.self_attn.in_proj_weight"].shape == (3 * 64, 64)
    back, unmapped = official_to_ours(official)
    assert unmapped == []
    own = _weights(model.state_dict())  # BatchNorm's step counters are not carried over
    assert back.keys() == own.keys()
    assert all(torch.equal(back[k], own[k]) for k in own)


def test_the_config_is_read_from_the_shapes(small):
    _model, config, official = small
    found, names = config_from_official(official, {})
    assert found == config
    assert names[:3] == ["person", "bicycle", "car"] and len(names) == 80
    assert config_from_official(official, {"num_queries": 12})[0].num_queries == 12
    without = {k: v for k, v in official.items() if "denoising" not in k}
    assert config_from_official(without, {})[0].num_denoising == 0


def test_an_official_release_imports_exactly(tmp_path, small):
    model, config, official = small
    release = tmp_path / "rtdetrv2_r18vd_120e_coco_rerun_48.1.pth"
    torch.save({"model": official}, release)
    out = tmp_path / "model.pt"
    assert main(["import", str(release), "--format", "rtdetr-v2", "--out", str(out)]) == 0
    imported, payload = load_model(str(out))
    assert payload["config"] == config.model_dump(mode="json")
    names, categories = payload["extra"]["class_names"], payload["extra"]["label_to_category"]
    assert names[0] == "person" and names[-1] == "toothbrush"
    assert categories == COCO_CATEGORY_IDS and categories[-1] == 90
    assert _same_outputs(model, imported)


def test_an_ema_training_checkpoint_imports_its_ema_weights(tmp_path, caplog, small):
    model, _config, ema = small
    raw = {**ema, "decoder.dec_score_head.1.bias": torch.randn(80)}  # the last stage's scores
    # what the official solver's state_dict() saves; ModelEMA.state_dict() is module + updates
    checkpoint = {
        "date": "2024-07-24T10:00:00",
        "last_epoch": 71,
        "model": raw,
        "ema": {"module": ema, "updates": 84_000},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
    }
    release = tmp_path / "rtdetrv2_r18vd_120e_coco_ema.pth"
    torch.save(checkpoint, release)
    out = tmp_path / "model.pt"
    with caplog.at_level(logging.INFO, logger="detrdistill"):
        assert main(["import", str(release), "--out", str(out)]) == 0
    assert "imported the EMA weights" in caplog.text
    imported, _payload = load_model(str(out))
    assert _same_outputs(model, imported)


def _refused(tmp_path, capsys, official, message, name="release.pth", fmt=()):
    torch.save({"model": official}, tmp_path / name)
    out = tmp_path / "m.pt"
    assert main(["import", str(tmp_path / name), "--out", str(out), *fmt]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def _learnt_queries(official):
    official["decoder.tgt_embed.weight"] = torch.zeros(300, 64)


def _agnostic_selection(official):
    official["decoder.enc_score_head.weight"] = torch.zeros(1, 64)
    official["decoder.enc_score_head.bias"] = torch.zeros(1)


def _version_1(official):  # RT-DETR v1's HybridEncoder names its projections 0 and 1
    for name in [n for n in official if n.startswith("encoder.input_proj.")]:
        official[name.replace(".conv.", ".0.").replace(".norm.", ".1.")] = official.pop(name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_learnt_queries, "learn_query_content"),
        (_agnostic_selection, "agnostic"),
        (_version_1, "RT-DETR (v1)"),
    ],
)
def test_variants_we_do_not_represent_are_refused(tmp_path, capsys, small, change, message):
    official = dict(small[2])
    change(official)
    _refused(tmp_path, capsys, official, message)


def test_a_discrete_sampling_release_is_refused_by_its_name(tmp_path, capsys, small):
    _refused(tmp_path, capsys, small[2], "discrete", name="rtdetrv2_r18vd_dsp_3x_coco.pth")


def test_the_format_flag_is_checked_against_an_rtdetr_file(tmp_path, capsys, small):
    _refused(
        tmp_path,
        capsys,
        small[2],
        "--format deformable-detr, but the file holds a rtdetr_v2",
        fmt=("--format", "deformable-detr"),
    )


def test_a_release_with_points_per_level_imports_exactly(tmp_path):
    """RT-DETRv2's per-level sampling points (here 2, 6 and 4): read from num_points_scale."""
    torch.manual_seed(0)
    config = model_config_from_dict({**SMALL, "num_points": [2, 6, 4]})
    model = build_model(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    official = ours_to_official(model.state_dict(), num_points=[2, 6, 4])
    assert official["decoder.decoder.layers.1.cross_attn.num_points_scale"].numel() == 12
    torch.save({"model": official}, tmp_path / "release.pth")
    out = tmp_path / "model.pt"
    assert main(["import", str(tmp_path / "release.pth"), "--out", str(out)]) == 0
    imported, payload = load_model(str(out))
    assert payload["config"]["num_points"] == [2, 6, 4]
    assert _same_outputs(model, imported)
