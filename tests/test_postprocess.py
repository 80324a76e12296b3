"""Tests for detr_models.postprocess: top-k decoding and pixel conversion."""

from __future__ import annotations

import pytest
import torch

from detr_models.postprocess import PostProcess


def logit(p: float) -> float:
    return float(torch.logit(torch.tensor(p)))


def test_top_k_order_and_decomposition() -> None:
    # Q=3 queries, C=2 classes; scores chosen so the ranking crosses queries and classes.
    probs = torch.tensor([[[0.10, 0.80], [0.95, 0.20], [0.30, 0.60]]])  # [1, 3, 2]
    logits = torch.logit(probs)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1], [0.75, 0.5, 0.5, 1.0]]])
    (result,) = PostProcess(top_k=4)(logits, boxes, torch.tensor([[100, 200]]))
    torch.testing.assert_close(result["scores"], torch.tensor([0.95, 0.80, 0.60, 0.30]))
    assert result["labels"].tolist() == [0, 1, 1, 0]
    assert result["labels"].dtype == torch.int64
    # Queries in that order are 1, 0, 2, 2: check through their boxes (W=200, H=100).
    expected = torch.tensor(
        [[40.0, 20.0, 60.0, 30.0], [80.0, 40.0, 120.0, 60.0], [100.0, 0.0, 200.0, 100.0]]
    )[[0, 1, 2, 2]]
    torch.testing.assert_close(result["boxes"], expected)


def test_pixel_conversion_and_clamping() -> None:
    logits = torch.tensor([[[3.0], [-3.0]]])  # [1, 2, 1]
    boxes = torch.tensor([[[0.5, 0.25, 0.5, 0.5], [0.95, 0.05, 0.2, 0.2]]])
    (result,) = PostProcess()(logits, boxes, torch.tensor([[480, 640]]))  # H=480, W=640
    torch.testing.assert_close(result["boxes"][0], torch.tensor([160.0, 0.0, 480.0, 240.0]))
    # The second box sticks out to the right and the top; it is clamped to the image.
    torch.testing.assert_close(result["boxes"][1], torch.tensor([544.0, 0.0, 640.0, 72.0]))


def test_k_is_clipped_to_queries_times_classes() -> None:
    logits = torch.randn(2, 3, 4)
    boxes = torch.rand(2, 3, 4)
    results = PostProcess(top_k=100)(logits, boxes, torch.tensor([[10, 10], [20, 30]]))
    assert len(results) == 2
    for result in results:
        assert result["scores"].shape == (12,)
        assert result["labels"].shape == (12,)
        assert result["boxes"].shape == (12, 4)
        assert torch.all(result["scores"][:-1] >= result["scores"][1:])
    (small,) = PostProcess(top_k=5)(logits[:1], boxes[:1], torch.tensor([[10, 10]]))
    assert small["scores"].shape == (5,)


def test_predictions_for_evaluator() -> None:
    logits = torch.tensor([[[logit(0.9), logit(0.1)]], [[logit(0.2), logit(0.7)]]])  # [2, 1, 2]
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0]], [[0.5, 0.5, 0.5, 0.5]]])
    targets = [
        {
            "image_id": torch.tensor(42),
            "orig_size": torch.tensor([30, 40]),
            "size": torch.tensor([3, 4]),
        },
        {"image_id": 7, "orig_size": torch.tensor([10, 20])},
    ]
    results = PostProcess(top_k=1).predictions_for_evaluator(logits, boxes, targets)
    assert [r["image_id"] for r in results] == [42, 7]
    assert all(set(r) == {"image_id", "boxes", "scores", "labels"} for r in results)
    torch.testing.assert_close(results[0]["boxes"], torch.tensor([[0.0, 0.0, 40.0, 30.0]]))
    torch.testing.assert_close(results[1]["boxes"], torch.tensor([[5.0, 2.5, 15.0, 7.5]]))
    assert results[1]["labels"].tolist() == [1]


def test_nan_predictions_and_bad_shapes() -> None:
    logits = torch.full((1, 2, 2), float("nan"))
    boxes = torch.full((1, 2, 4), float("nan"))
    (result,) = PostProcess()(logits, boxes, torch.tensor([[10, 10]]))
    assert torch.isfinite(result["boxes"]).all() and torch.isfinite(result["scores"]).all()
    with pytest.raises(ValueError, match="orig_sizes"):
        PostProcess()(logits, boxes, torch.tensor([10, 10]))
    with pytest.raises(ValueError):
        PostProcess(top_k=0)
