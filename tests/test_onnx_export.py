"""ONNX export: every architecture exports and onnxruntime reproduces PyTorch on odd sizes;
post-processed graphs; eval and predict on the .onnx file give the PyTorch file's detections
and AP; bad input refused with nothing written."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from detr_models.build import build_model
from detr_models.config import tiny_config
from orchestrator.cli.main import main
from orchestrator.deploy.graph import DeployGraph
from orchestrator.deploy.onnx_check import check_images
from orchestrator.deploy.onnx_export import ExportOptions, export_onnx
from orchestrator.errors import UserInputError
from orchestrator.training import checkpoints

EXTRA = {
    "class_names": ["circle", "square", "triangle"],
    "label_to_category": [1, 2, 3],
    "eval_size": 96,
    "max_size": 160,
}
# small graphs export faster: one decoder layer, two or three levels
LEVELS = {"levels": ["C4", "C5"], "decoder_layers": 1}
DEFORMABLE = {**LEVELS, "num_feature_levels": 3, "box_refine": True}
DINO = {
    **DEFORMABLE,
    "two_stage": True,
    "two_stage_queries": "mixed",
    "look_forward_twice": True,
    "num_denoising": 10,
}
# (architecture, overrides, dynamic, postprocess): every architecture, both shapes and outputs
# (DETR, dynamic, raw and post-processed: the eval test below; DINO stands for the two-stage
# Deformable DETR it builds on; exports take seconds each, so each case covers several things)
ONE_LAYER = {"decoder_layers": 1}
CASES = {
    "conditional_detr": ("conditional_detr", ONE_LAYER, False, True),
    "dab_detr": ("dab_detr", ONE_LAYER, True, True),
    "deformable_refine": ("deformable_detr", DEFORMABLE, False, False),
    "dino": ("deformable_detr", DINO, False, True),
    "rtdetr_v2": ("rtdetr_v2", {**LEVELS, "levels": ["C3", "C4", "C5"]}, True, False),
}


def _model(architecture: str, overrides: dict):
    torch.manual_seed(0)
    config = tiny_config(architecture, **overrides)
    return build_model(config).eval(), config


@pytest.mark.parametrize("case", list(CASES))
def test_every_architecture_exports_and_onnxruntime_agrees(case, tmp_path):
    architecture, overrides, dynamic, postprocess = CASES[case]
    model, _ = _model(architecture, overrides)
    out = tmp_path / f"{case}.onnx"
    options = ExportOptions(
        dynamic=dynamic, postprocess=postprocess, size=None if dynamic else (96, 128)
    )
    report = export_onnx(model, {**EXTRA, "architecture": architecture}, out, options)
    assert out.is_file() and report["opset"] >= 17
    sizes = [tuple(row["size"]) for row in report["checked"]]
    assert len(sizes) == (3 if dynamic else 1)
    assert max(report["max_diff"][k] for k in report["max_diff"] if k != "labels_differ") <= 1e-3

    # an independent run here, at an odd size when dynamic: the outputs are what they say
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == (["scores", "labels", "boxes"] if postprocess else ["logits", "boxes"])
    height, width = (83, 141) if dynamic else (96, 128)
    images = check_images([], 1, height, width)
    got = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = DeployGraph(model, postprocess).eval()(images)
    if postprocess:
        np.testing.assert_allclose(got[0], expected[0].numpy(), atol=1e-4)
        assert (got[2][..., [0, 2]] <= width).all() and (got[2][..., [1, 3]] <= height).all()
    else:
        assert got[0].shape == (1, model.num_queries, 3)
        np.testing.assert_allclose(got[1], expected[1].numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_model")
    model, config = _model("detr", ONE_LAYER)
    path = folder / "model.pt"
    checkpoints.save_model_file(path, model, config, EXTRA)
    return path


def test_eval_and_predict_on_the_onnx_file_match_pytorch(model_file, tmp_path, capsys):
    onnx_raw, onnx_post = tmp_path / "raw.onnx", tmp_path / "post.onnx"
    assert main(["export", str(model_file), "--out", str(onnx_raw), "--dynamic"]) == 0
    assert "max differences" in capsys.readouterr().out
    assert (
        main(["export", str(model_file), "--out", str(onnx_post), "--dynamic", "--postprocess"])
        == 0
    )
    data = tmp_path / "shapes"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(data),
                "--train",
                "2",
                "--val",
                "8",
                "--image-size",
                "96",
            ]
        )
        == 0
    )
    capsys.readouterr()
    metrics, results = {}, {}
    for source in (model_file, onnx_raw, onnx_post):
        written = tmp_path / f"{source.stem}.json"
        args = ["--data", str(data), "--batch-size", "3", "--results", str(written)]
        assert main(["eval", "--model", str(source), *args]) == 0
        metrics[source.stem] = json.loads(capsys.readouterr().out.splitlines()[-1])
        # (a post-processed graph's other classes score 0: not detections)
        found = [r for r in json.loads(written.read_text()) if r["score"] > 1e-6]
        results[source.stem] = sorted(found, key=lambda r: (r["image_id"], -r["score"]))
    reference = results["model"]
    assert len(reference) == 8 * 16 * 3  # every (query, class) of the 8 images
    for name in ("raw", "post"):
        assert metrics[name] == pytest.approx(metrics["model"], abs=1e-6)
        scores = np.array([[r["image_id"], r["score"]] for r in results[name]])
        expected = np.array([[r["image_id"], r["score"]] for r in reference])
        np.testing.assert_allclose(scores, expected, atol=1e-5)

    images = sorted((data / "val").glob("*.png"))[:2]
    detections = {}
    for source in (model_file, onnx_raw):
        out = tmp_path / f"pred_{source.stem}"
        assert main(["predict", "--model", str(source), *map(str, images), "--out", str(out)]) == 0
        detections[source.stem] = json.loads((out / "predictions.json").read_text())
    for mine, theirs in zip(detections["model"], detections["raw"], strict=True):
        boxes = np.array([d["bbox"] for d in mine["detections"][:20]])
        other = np.array([d["bbox"] for d in theirs["detections"][:20]])
        np.testing.assert_allclose(boxes, other, atol=0.05)


def test_bad_input_is_refused_and_nothing_is_written(model_file, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["export", str(model_file), "--out", str(out), "--opset", "13"]) == 2
    assert "too old" in capsys.readouterr().err and not out.exists()
    assert main(["export", "models:/nope", "--out", str(out)]) == 2
    assert "models:/" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["export", str(model_file), "--out", str(tmp_path / "x.onx")]) == 2
    assert ".onnx" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


class Toy(nn.Module):
    """A one-conv "detector" (exports in a moment) for what does not need a real one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 7, 3, stride=32)

    def forward(self, images):
        tokens = self.conv(images).flatten(2).transpose(1, 2)  # [B,Q,7]
        return SimpleNamespace(logits=[tokens[..., :3]], boxes=[tokens[..., 3:].sigmoid()])


def test_a_parity_failure_writes_nothing(tmp_path):
    with pytest.raises(UserInputError, match="onnxruntime disagrees with PyTorch"):
        export_onnx(Toy(), EXTRA, tmp_path / "m.onnx", ExportOptions(tolerance=0.0, size=(96, 96)))
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_onnx_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    data = tmp_path / "shapes"
    main(["data", "synth", "--out", str(data), "--train", "2", "--val", "2"])
    capsys.readouterr()
    assert main(["eval", "--model", str(bad), "--data", str(data)]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
