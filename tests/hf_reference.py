"""Hugging Face transformers models built from their configs with random weights (nothing is
downloaded), perturbed so no weight sits at its initial value, saved as Hub folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SMALL = {
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "num_queries": 12,
    "dropout": 0.0,
}
NAMES = {0: "cat", 1: "dog", 2: "bird", 3: "car", 4: "tree"}


def resnet18_config(stages: list[str]):
    from transformers import ResNetConfig

    return ResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        embedding_size=64,
        out_features=stages,
    )


def rtdetr_v2_config(**changes):
    """A small RT-DETRv2 (ResNet-18-vd, hidden expansion 0.5 as the R-18 release)."""
    import transformers as hf

    backbone = hf.RTDetrResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        embedding_size=64,
        out_features=["stage2", "stage3", "stage4"],
    )
    data = {
        "backbone_config": backbone,
        "id2label": NAMES,
        "d_model": 64,
        "encoder_hidden_dim": 64,
        "encoder_in_channels": [128, 256, 512],
        "decoder_in_channels": [64, 64, 64],
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "decoder_layers": 2,
        "num_queries": 12,
        "hidden_expansion": 0.5,
    }
    return hf.RTDetrV2Config(**{**data, **changes})


def hf_model(kind: str, seed: int = 0):
    """An HF DETR-family detector (eval mode) with perturbed random weights and BN statistics."""
    import transformers as hf

    torch.manual_seed(seed)
    if kind == "detr":
        model = hf.DetrForObjectDetection(
            hf.DetrConfig(backbone_config=resnet18_config(["stage4"]), id2label=NAMES, **SMALL)
        )
    elif kind == "conditional_detr":
        model = hf.ConditionalDetrForObjectDetection(
            hf.ConditionalDetrConfig(
                backbone_config=resnet18_config(["stage4"]), id2label=NAMES, **SMALL
            )
        )
    elif kind == "dab_detr":
        small = {k: v for k, v in SMALL.items() if k != "d_model"}
        model = hf.DabDetrForObjectDetection(
            hf.DabDetrConfig(
                backbone_config=resnet18_config(["stage4"]), id2label=NAMES, hidden_size=64, **small
            )
        )
    elif kind == "rtdetr_v2":
        model = hf.RTDetrV2ForObjectDetection(rtdetr_v2_config())
    else:
        model = hf.DeformableDetrForObjectDetection(
            hf.DeformableDetrConfig(
                backbone_config=resnet18_config(["stage2", "stage3", "stage4"]),
                id2label=NAMES,
                num_feature_levels=4,
                with_box_refine=kind in ("deformable_refine", "deformable_two_stage"),
                two_stage=kind == "deformable_two_stage",
                two_stage_num_proposals=SMALL["num_queries"],
                **SMALL,
            )
        )
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
    return model.eval()


def save_folder(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def padded_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images [2,3,96,128], the second padded right and bottom: (pixels, HF pixel_mask)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 96, 128, generator=generator)
    mask = torch.ones(2, 96, 128, dtype=torch.long)
    mask[1, :, 100:] = 0
    mask[1, 70:] = 0
    pixels[1][:, mask[1] == 0] = 0
    return pixels, mask


def as_pipeline_pixels(kind: str, pixels: torch.Tensor) -> torch.Tensor:
    """What our data pipeline hands the model for the pixels an HF model was given: RT-DETR
    reads [0, 1] pixels (ours takes ImageNet-normalised ones and undoes it); the others read
    normalised pixels already."""
    if kind != "rtdetr_v2":
        return pixels
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (pixels - mean) / std
