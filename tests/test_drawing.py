"""Tests for orchestrator.evaluation.drawing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
from orchestrator.evaluation.mosaic import TILE_GAP, sample_mosaic


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


def mosaic_sample(
    height: int = 64,
    width: int = 64,
    color: tuple[int, int, int] = (90, 160, 90),
    pred_boxes: list[list[float]] | None = None,
    pred_labels: list[int] | None = None,
    pred_scores: list[float] | None = None,
    gt_boxes: list[list[float]] | None = None,
) -> dict:
    """An evaluation sample (as the engine builds it) of one flat colour: ImageNet-normalised
    image, pixel xyxy predictions, normalised cxcywh ground truth (all labelled 0)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)  # [3, 1, 1]
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)  # [3, 1, 1]
    pixels = torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 255.0
    image = ((pixels - mean) / std).expand(3, height, width).clone()  # [3, H, W]
    gt = torch.tensor(gt_boxes or [], dtype=torch.float32).reshape(-1, 4)
    return {
        "image": image,
        "prediction": {
            "boxes": torch.tensor(pred_boxes or [], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(pred_labels or [], dtype=torch.int64),
            "scores": torch.tensor(pred_scores or [], dtype=torch.float32),
        },
        "target": {
            "boxes": gt,
            "labels": torch.zeros(len(gt), dtype=torch.int64),
            "size": torch.tensor([height, width]),
        },
    }


def runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))  # starts and ends, alternating
    return (edges[1::2] - edges[::2]).tolist()


def test_mosaic_grid_of_upscaled_tiles() -> None:
    color = (90, 160, 90)
    mosaic = sample_mosaic([mosaic_sample(color=color) for _ in range(5)], ["cat"])
    assert mosaic.dtype == np.uint8 and mosaic.ndim == 3 and mosaic.shape[2] == 3
    tile = (mosaic == color).all(axis=2)  # [H, W]
    # Five samples make a near-square grid: two rows, of three and two tiles.
    assert runs(tile.any(axis=1)) == [384, 384]  # 64 px upscaled to the 384 px min_side
    first_row, second_row = TILE_GAP + 100, 2 * TILE_GAP + 384 + 100
    assert runs(tile[first_row]) == [384, 384, 384]
    assert runs(tile[second_row]) == [384, 384]
    assert mosaic.shape[1] == 3 * 384 + 4 * TILE_GAP

    one_row = sample_mosaic([mosaic_sample() for _ in range(5)], ["cat"], columns=5)
    assert runs((one_row == color).all(axis=2)[first_row]) == [384] * 5

    # A 128 x 96 sample scales by 4 (short side 96 -> 384), keeping its aspect ratio.
    tall = sample_mosaic([mosaic_sample(128, 96)], ["cat"], min_side=300)
    mask = (tall == color).all(axis=2)
    assert runs(mask.any(axis=1)) == [512] and runs(mask.any(axis=0)) == [384]


def test_mosaic_legend_has_every_class_colour() -> None:
    names = ["circle", "square", "triangle", "star"]
    mosaic = sample_mosaic([mosaic_sample(), mosaic_sample()], names)
    legend = mosaic[TILE_GAP + 384 :]  # below the tiles; no sample has a box
    for label in range(len(names)):
        assert (legend == class_color(label)).all(axis=2).any(), names[label]
    assert not (mosaic[: TILE_GAP + 384] == class_color(0)).all(axis=2).any()


def test_mosaic_ground_truth_and_predictions_look_different() -> None:
    sample = mosaic_sample(
        color=(128, 128, 128),
        # In the 64 px image: one confident box right, one below the threshold left-top.
        pred_boxes=[[40.0, 16.0, 60.0, 48.0], [2.0, 2.0, 30.0, 12.0]],
        pred_labels=[1, 2],
        pred_scores=[0.9, 0.1],
        gt_boxes=[[0.25, 0.5, 0.3, 0.6]],  # cxcywh: x 0.1-0.4, y 0.2-0.8
    )
    mosaic = sample_mosaic([sample], ["cat", "dog", "bird"])
    tile = mosaic[TILE_GAP : TILE_GAP + 384, TILE_GAP : TILE_GAP + 384]  # upscaled 6x

    # Ground truth: bottom edge at y = 0.8 * 384 = 307, x from 38 to 154; dashed white on black.
    gt_edge = tile[306, 40:153].reshape(-1, 3)
    white = (gt_edge == 255).all(axis=1)
    black = (gt_edge == 0).all(axis=1)
    assert white.any() and black.any() and (white | black).all()

    # Prediction: bottom edge at y = 48 * 6 = 288, x from 240 to 360; solid class colour.
    assert (tile[287, 240:361] == class_color(1)).all()
    # Its label patch sits just above the box's top edge (y = 96).
    assert (tile[70:96, 240:300] == class_color(1)).all(axis=2).any()
    # The box below the score threshold is not drawn (its colour is only in the legend).
    assert not (tile == class_color(2)).all(axis=2).any()
    assert (mosaic[TILE_GAP + 384 :] == class_color(2)).all(axis=2).any()


def test_mosaic_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        sample_mosaic([], ["cat"])
