"""Tiny Hugging Face detectors of every class the teacher adapter reads, built from their
configs with random weights (nothing is downloaded) and saved as model folders."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.hf_reference import NAMES, hf_model, rtdetr_v2_config

# the HF classes of tests/hf_reference.py, by our kind name
CLASSIC = (
    "detr",
    "conditional_detr",
    "dab_detr",
    "deformable",
    "deformable_two_stage",
    "rtdetr_v2",
)
NEW = ("d_fine", "deimv2", "lw_detr", "rf_detr")
KINDS = CLASSIC + NEW


def _resnet_backbone():
    import transformers as hf

    return hf.RTDetrResNetConfig(
        layer_type="basic",
        depths=[1, 1, 1, 1],
        hidden_sizes=[32, 64, 128, 256],
        embedding_size=32,
        out_features=["stage2", "stage3", "stage4"],
    )


def _dfine_like(config_class):
    return config_class(
        backbone_config=_resnet_backbone(),
        encoder_in_channels=[64, 128, 256],
        d_model=64,
        encoder_hidden_dim=64,
        decoder_in_channels=[64, 64, 64],
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        decoder_layers=3,
        num_queries=20,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        hidden_expansion=0.5,
        id2label=NAMES,
    )


def _lw_rf(kind: str):
    import transformers as hf

    common = dict(
        d_model=64,
        decoder_layers=3,
        decoder_self_attention_heads=4,
        decoder_cross_attention_heads=4,
        decoder_ffn_dim=128,
        decoder_n_points=2,
        num_queries=12,  # at most the tokens of a 64 px image (RF-DETR: 4 x 4 at stride 16)
        group_detr=2,
        hidden_expansion=0.5,
        c2f_num_blocks=1,
        id2label=NAMES,
    )
    if kind == "lw_detr":
        backbone = hf.LwDetrViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            patch_size=16,
            image_size=128,
            pretrain_image_size=128,
            num_windows=4,
            window_block_indices=[0],
            out_indices=[1, 2],
        )
        return hf.LwDetrForObjectDetection(
            hf.LwDetrConfig(backbone_config=backbone, projector_scale_factors=[2.0, 0.5], **common)
        )
    backbone = hf.RfDetrDinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=16,
        image_size=128,
        num_windows=2,
        out_indices=[1, 2],
    )
    return hf.RfDetrForObjectDetection(
        hf.RfDetrConfig(backbone_config=backbone, num_feature_levels=1, **common)
    )


def tiny_hf_detector(kind: str, seed: int = 0):
    """An HF detector of `kind` in eval mode, perturbed random weights."""
    import transformers as hf

    if kind in CLASSIC:
        name = {"deformable": "deformable_refine"}.get(kind, kind)
        return hf_model(name, seed)
    torch.manual_seed(seed)
    if kind == "d_fine":
        model = hf.DFineForObjectDetection(_dfine_like(hf.DFineConfig))
    elif kind == "deimv2":
        model = hf.Deimv2ForObjectDetection(_dfine_like(hf.Deimv2Config))
    else:
        model = _lw_rf(kind)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def save_tiny(kind: str, folder: Path, seed: int = 0) -> Path:
    tiny_hf_detector(kind, seed).save_pretrained(folder)
    return folder


__all__ = ["KINDS", "rtdetr_v2_config", "save_tiny", "tiny_hf_detector"]
