"""Size and speed beside AP: GFLOPs that count deformable attention's sampling, parameters,
latency, and the comparison table's columns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detr_models.build import build_model
from detr_models.config import tiny_config
from orchestrator.deploy import cost
from orchestrator.launch.compare import Row, format_table, model_cost
from orchestrator.training import checkpoints


class Sampler(nn.Module):
    """A conv and one grid_sample, so their FLOPs can be counted by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.grid = nn.Parameter(torch.rand(1, 5, 7, 2) * 2 - 1)
        self.num_queries = 1

    def forward(self, images):
        feature = self.conv(images)
        sampled = F.grid_sample(
            feature, self.grid.expand(images.shape[0], -1, -1, -1), align_corners=False
        )
        out = type("Out", (), {})()
        out.logits = [sampled.flatten(1)[:, None, :3]]
        out.boxes = [sampled.flatten(1)[:, None, :4].sigmoid()]
        return out


def test_gflops_count_grid_sample_by_hand():
    height, width = 10, 12
    conv = 2 * 3 * 8 * height * width  # multiply-adds x 2
    sampled = 8 * 8 * 5 * 7  # 8 FLOPs per sampled value, 8 channels, 5 x 7 points
    assert cost.gflops(Sampler(), height, width) * 1e9 == pytest.approx(conv + sampled)


def test_deformable_attention_sampling_is_counted():
    model = build_model(tiny_config("deformable_detr", levels=["C4", "C5"], num_feature_levels=3))
    with_sampling = cost.gflops(model.eval(), 96, 96)
    plain = torch.utils.flop_counter.FlopCounterMode(display=False)
    with plain, torch.no_grad():
        cost.DeployGraph(model).eval()(torch.rand(1, 3, 96, 96))
    assert with_sampling * 1e9 > plain.get_total_flops()


def test_model_cost_and_the_comparison_table(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("detr", decoder_layers=1)
    model = build_model(config)
    path = tmp_path / "model.pt"
    checkpoints.save_model_file(
        path, model, config, {"eval_size": 96, "class_names": ["a", "b", "c"]}
    )
    measured = model_cost(str(path), None, 96)
    assert measured["params_M"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert measured["gflops"] > 0 and measured["onnx_ms"] > 0 and measured["torch_ms"] > 0
    assert measured["onnx_max_diff"] <= 1e-3 and measured["size"] == 96
    table = format_table([Row("teacher (detr)", 0.5, 0.7, measured), Row("student", None, 0.2)])
    header, _, teacher, student, note = table.splitlines()
    assert header.split() == [
        "model",
        "AP",
        "AP50",
        "params",
        "M",
        "GFLOPs",
        "ORT",
        "ms",
        "torch",
        "ms",
    ]
    assert f"{measured['gflops']:.2f}" in teacher and "0.500" in teacher
    assert student.split()[-5:] == ["0.200", "n/a", "n/a", "n/a", "n/a"]
    assert f"{measured['threads']} CPU threads" in note and "96x96, batch 1" in note
    assert model_cost(str(tmp_path / "missing.pt"), None, 96) is None  # a warning, not a crash


def test_compare_reads_the_cost_a_registered_version_carries():
    from orchestrator.launch.compare import recorded_cost
    from orchestrator.launch.export import cost_tags

    cost = {"params_M": 1.5, "gflops": 2.25, "onnx_ms": 3.5, "torch_ms": 7.25}
    tags = cost_tags({**cost, "size": 128, "threads": 2})
    assert recorded_cost(tags, 128) == {**cost, "size": 128, "threads": 2}
    assert recorded_cost(tags, 256) is None  # measured at another size: measure again
    assert recorded_cost({"params_M": "1.5"}, 128) is None  # no export cost on the version
