"""Tests for orchestrator.evaluation.drawing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from orchestrator.evaluation.drawing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    class_color,
    denormalize_image,
    draw_detections,
    save_detections_png,
)


def black(height: int = 100, width: int = 120) -> torch.Tensor:
    return torch.zeros(3, height, width, dtype=torch.uint8)


def test_box_outline_drawn_and_centre_untouched() -> None:
    out = draw_detections(
        black(),
        boxes=torch.tensor([[20.0, 20.0, 90.0, 80.0]]),
        labels=torch.tensor([1]),
        scores=torch.tensor([0.9]),
        class_names=["cat", "dog"],
    )
    assert out.dtype == torch.uint8 and out.shape == (3, 100, 120)
    # Bottom and right edges (away from the label patch at the top-left) carry the class colour.
    assert out[:, 80, 55].tolist() == list(class_color(1))
    assert out[:, 50, 90].tolist() == list(class_color(1))
    # No fill: the inside of a large box is untouched.
    assert out[:, 50, 55].sum() == 0
    assert out[:, 60:75, 40:80].sum() == 0


def test_prediction_below_threshold_not_drawn() -> None:
    out = draw_detections(
        black(),
        boxes=torch.tensor([[20.0, 20.0, 90.0, 80.0], [5.0, 5.0, 15.0, 15.0]]),
        labels=torch.tensor([0, 1]),
        scores=torch.tensor([0.1, 0.29]),
        score_threshold=0.3,
    )
    assert out.sum() == 0


def test_threshold_keeps_only_confident_boxes() -> None:
    out = draw_detections(
        black(),
        boxes=torch.tensor([[20.0, 20.0, 90.0, 80.0], [2.0, 85.0, 12.0, 95.0]]),
        labels=torch.tensor([0, 1]),
        scores=torch.tensor([0.8, 0.1]),
    )
    assert out[:, 80, 55].sum() > 0
    assert out[:, 95, 7].sum() == 0


def test_ground_truth_drawn_in_white() -> None:
    out = draw_detections(
        black(),
        boxes=torch.zeros(0, 4),
        labels=torch.zeros(0, dtype=torch.int64),
        gt_boxes=torch.tensor([[10.0, 10.0, 100.0, 90.0]]),
        gt_labels=torch.tensor([0]),
        class_names=["cat"],
    )
    assert out[:, 90, 50].tolist() == [255, 255, 255]
    assert out[:, 50, 100].tolist() == [255, 255, 255]
    assert out[:, 50, 50].sum() == 0


def test_float_image_accepted() -> None:
    image = torch.full((3, 50, 60), 0.5)
    out = draw_detections(image, torch.tensor([[5.0, 5.0, 40.0, 40.0]]), torch.tensor([2]))
    assert out.dtype == torch.uint8
    assert out[:, 25, 25].tolist() == [128, 128, 128]
    assert out[:, 40, 25].tolist() == list(class_color(2))


def test_boxes_outside_image_clamped_or_dropped() -> None:
    boxes = torch.tensor(
        [
            [-30.0, -30.0, 50.0, 60.0],  # partly outside: clamped to the top-left corner
            [200.0, 200.0, 300.0, 300.0],  # entirely outside
            [30.0, 30.0, 30.0, 60.0],  # zero width
            [70.0, 40.0, 60.0, 50.0],  # x2 < x1
            [float("nan"), 0.0, 10.0, 10.0],
        ]
    )
    out = draw_detections(black(), boxes, torch.zeros(5, dtype=torch.int64))
    assert out[:, 60, 25].tolist() == list(class_color(0))  # bottom edge of the clamped box
    assert out[:, 30:60, 55:120].sum() == 0  # nothing from the dropped boxes

    nothing = draw_detections(black(), boxes[1:], torch.zeros(4, dtype=torch.int64))
    assert nothing.sum() == 0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="3, H, W"):
        draw_detections(torch.zeros(2, 3, 10, 10), torch.zeros(0, 4), torch.zeros(0))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        draw_detections(black(), torch.zeros(2, 5), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        draw_detections(black(), torch.zeros(2, 4), torch.zeros(3))


def test_denormalize_inverts_normalisation() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8, generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)  # [3, 1, 1]
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)  # [3, 1, 1]
    normalized = (image.float() / 255.0 - mean) / std  # [3, 32, 48]
    restored = denormalize_image(normalized)
    assert restored.dtype == torch.uint8 and restored.shape == image.shape
    assert (restored.int() - image.int()).abs().max() <= 1

    batch = denormalize_image(normalized.unsqueeze(0).repeat(2, 1, 1, 1))
    assert batch.shape == (2, 3, 32, 48)
    assert torch.equal(batch[1], restored)


def test_save_detections_png(tmp_path: Path) -> None:
    path = save_detections_png(
        tmp_path / "a" / "b" / "det.png",
        black(40, 70),
        torch.tensor([[5.0, 5.0, 30.0, 30.0]]),
        torch.tensor([0]),
        scores=torch.tensor([0.9]),
        class_names=["cat"],
    )
    assert path == tmp_path / "a" / "b" / "det.png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (70, 40)
        assert img.mode == "RGB"
        assert img.getpixel((17, 30)) == class_color(0)
