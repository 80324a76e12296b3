"""ResNet-vd against transformers' RTDetrResNetBackbone: the weight-name rules map every HF
backbone name, and the three feature maps match after a strict load."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from detr_models.pretrained.hf_keys_resnet_vd import RESNET_VD_RULES, resnet_vd_depth
from detr_models.resnet_vd import RESNET_VD_LAYOUTS, STAGE_WIDTHS, ResNetVd

HF_PREFIX = "model.backbone.model."  # the backbone inside RTDetrV2ForObjectDetection


def hf_config(depth: int) -> dict:
    layer_type, blocks = RESNET_VD_LAYOUTS[depth]
    return {
        "layer_type": layer_type,
        "depths": list(blocks),
        "hidden_sizes": list(STAGE_WIDTHS[layer_type]),
        "embedding_size": 64,
        "out_features": ["stage2", "stage3", "stage4"],
    }


def hf_backbones(depth: int, seed: int = 0):
    """transformers' backbone (eval mode) plain and as RTDetrV2ConvEncoder holds it (frozen
    BatchNorm), every weight moved off its initial value. BN statistics are measured on random
    images and residual branches end with small scales, as in a trained net, so features stay
    O(1) and 1e-4 is a meaningful tolerance."""
    from transformers import RTDetrResNetBackbone, RTDetrResNetConfig
    from transformers.models.rt_detr_v2.modeling_rt_detr_v2 import replace_batch_norm

    torch.manual_seed(seed)
    model = RTDetrResNetBackbone(RTDetrResNetConfig(**hf_config(depth)))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # running stats = this batch's statistics
        model.train()(torch.randn(4, 3, 64, 64))
        for stage in model.encoder.stages:  # trained nets end residual branches with small scales
            for block in stage.layers:
                block.layer[-1].normalization.weight.mul_(0.25)
    frozen = copy.deepcopy(model)
    with torch.no_grad():
        replace_batch_norm(frozen)
    return model.eval(), frozen.eval()


def convert(hf_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our `backbone.*` state, the HF names no rule maps)."""
    ours, unmapped = {}, []
    for name, tensor in hf_state.items():
        key = HF_PREFIX + name
        for pattern, target in RESNET_VD_RULES:
            new, count = re.subn(pattern, target, key, count=1)
            if count:
                ours[new] = tensor
                break
        else:
            unmapped.append(key)
    return ours, unmapped


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("backbone."): v for k, v in state.items()}


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_every_hf_backbone_name_maps_onto_ours(depth):
    from transformers import RTDetrResNetBackbone, RTDetrResNetConfig
    from transformers.models.rt_detr_v2.modeling_rt_detr_v2 import replace_batch_norm

    with torch.device("meta"):
        hf = RTDetrResNetBackbone(RTDetrResNetConfig(**hf_config(depth)))
        replace_batch_norm(hf)
        ours = ResNetVd(depth)
    converted, unmapped = convert(hf.state_dict())
    assert unmapped == []
    assert all(k.startswith("backbone.") for k in converted)
    assert set(backbone_state(converted)) == set(ours.state_dict())
    assert len(converted) == len(hf.state_dict())  # no two HF names onto one of ours


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_feature_maps_match_transformers(depth):
    images = torch.randn(2, 3, 97, 130)  # odd sizes exercise ceil-mode pooling and padding
    hf_plain, hf_frozen = hf_backbones(depth)
    ours = ResNetVd(depth, levels=("C3", "C4", "C5")).eval()
    state, unmapped = convert(hf_frozen.state_dict())
    assert unmapped == []
    ours.load_state_dict(backbone_state(state), strict=True)
    with torch.no_grad():
        expected_plain = hf_plain(images).feature_maps
        expected_frozen = hf_frozen(images).feature_maps
        got = ours(images)
    widths = STAGE_WIDTHS[RESNET_VD_LAYOUTS[depth][0]]
    assert [f.shape[1] for f in got] == ours.channels == list(widths[1:])
    assert [tuple(f.shape[-2:]) for f in got] == [(13, 17), (7, 9), (4, 5)]
    for mine, plain, frozen in zip(got, expected_plain, expected_frozen, strict=True):
        assert 0.1 < frozen.std() < 10  # a trained-like scale, not vanishing or exploding
        assert (mine - frozen).abs().max().item() <= 1e-4
        assert (mine - plain).abs().max().item() <= 1e-4


def test_levels_select_maps_and_channels():
    net = ResNetVd(18, levels=("C5", "C3")).eval()
    with torch.no_grad():
        maps = net(torch.randn(1, 3, 64, 64))
    assert net.channels == [128, 512]
    assert net.strides == [8, 32]
    assert [tuple(m.shape[1:]) for m in maps] == [(128, 8, 8), (512, 2, 2)]
    with pytest.raises(ValueError, match="levels"):
        ResNetVd(18, levels=("C6",))
    with pytest.raises(ValueError, match="depth"):
        ResNetVd(152)


def test_batch_norm_frozen_and_frozen_stages():
    net = ResNetVd(18, frozen_stages=1)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert not any(".norm." in n for n, _ in net.named_parameters())  # norms hold buffers only
    assert not any(n.startswith(("stem.", "stages.0.")) for n in trainable)
    assert "stages.1.0.conv1.conv.weight" in trainable
    assert all(p.requires_grad for p in ResNetVd(18).parameters())


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_depth_read_from_hf_config(depth):
    assert resnet_vd_depth(hf_config(depth)) == depth


@pytest.mark.parametrize(
    "change, message",
    [
        ({"depths": [3, 8, 36, 3]}, "not a ResNet-vd"),
        ({"layer_type": "basic", "depths": [3, 4, 23, 3]}, "not a ResNet-vd"),
        ({"downsample_in_bottleneck": True}, "downsample_in_bottleneck"),
        ({"hidden_sizes": [64, 128, 256, 512]}, "hidden_sizes"),
        ({"embedding_size": 32}, "embedding_size"),
    ],
)
def test_depth_reader_refuses_other_configs(change, message):
    with pytest.raises(ValueError, match=message):
        resnet_vd_depth({**hf_config(50), **change})
