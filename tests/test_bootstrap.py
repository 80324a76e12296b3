"""The bootstrap AP against pycocotools: equal with unit weights, equal to pycocotools on the
kept images when some weights are zero, and paired intervals that see a real difference."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from orchestrator.evaluation.bootstrap import ImageMatches, draws, paired_interval

CATEGORIES = (2, 5, 9)


def _ground_truth(num_images: int, rng: np.random.Generator) -> COCO:
    images, annotations = [], []
    for i in range(num_images):
        images.append({"id": 100 + i, "width": 128, "height": 128, "file_name": f"{i}.png"})
        for _ in range(rng.integers(1, 5)):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(6, 45, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + i,
                    "category_id": int(rng.choice(CATEGORIES)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in CATEGORIES],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections(coco: COCO, rng: np.random.Generator, noise: float) -> list[dict]:
    """Jittered ground truth (some with the wrong class, some missed) plus false positives."""
    out = []
    for a in coco.dataset["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, noise * max(w, h), 4)
        category = a["category_id"] if rng.random() > 0.1 else int(rng.choice(CATEGORIES))
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)]
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": category,
                "bbox": box,
                "score": float(rng.uniform(0.3, 1)),
            }
        )
    for image in coco.dataset["images"]:
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 100, 2)
            out.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.choice(CATEGORIES)),
                    "bbox": [x, y, 20.0, 20.0],
                    "score": float(rng.uniform(0, 0.8)),
                }
            )
    return out


def _pycocotools_ap(coco: COCO, detections: list[dict], image_ids: list[int]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def test_unit_weights_give_pycocotools_ap() -> None:
    rng = np.random.default_rng(0)
    coco = _ground_truth(60, rng)
    detections = _detections(coco, rng, noise=0.08)
    expected = _pycocotools_ap(coco, detections, sorted(coco.getImgIds()))
    assert 0.1 < expected < 0.9  # a case where matching and ranking matter
    assert ImageMatches.from_detections(coco, detections).ap()[0] == pytest.approx(
        expected, abs=1e-9
    )


def test_zero_weights_drop_images_as_pycocotools_does() -> None:
    rng = np.random.default_rng(1)
    coco = _ground_truth(50, rng)
    detections = _detections(coco, rng, noise=0.1)
    matches = ImageMatches.from_detections(coco, detections)
    keep = rng.random(50) < 0.5
    kept_ids = [i for i, k in zip(matches.image_ids, keep, strict=True) if k]
    expected = _pycocotools_ap(coco, detections, kept_ids)
    assert matches.ap(keep[None].astype(float))[0] == pytest.approx(expected, abs=1e-9)


def test_paired_interval_separates_a_better_model_and_covers_zero_for_itself() -> None:
    rng = np.random.default_rng(2)
    coco = _ground_truth(120, rng)
    good = ImageMatches.from_detections(coco, _detections(coco, rng, noise=0.03))
    poor = ImageMatches.from_detections(coco, _detections(coco, rng, noise=0.15))
    weights = draws(120, count=200, seed=0)
    delta, (low, high) = paired_interval(good, poor, weights)
    assert delta > 0 and low > 0 and low < delta < high
    same, (low, high) = paired_interval(good, good, weights)
    assert same == 0 and low == 0 and high == 0
    # the draws: each draws as many images as there are, with replacement
    assert (weights.sum(axis=1) == 120).all() and (weights == 0).any()


def test_the_basic_interval_reflects_the_draws_around_the_estimate() -> None:
    from orchestrator.evaluation.bootstrap import interval

    draws_above = np.linspace(0.6, 1.0, 4001)  # every draw above the estimate: biased upward
    low, high = interval(draws_above, 0.5)
    assert low == pytest.approx(0.5 - (0.99 - 0.5), abs=1e-9)
    assert high == pytest.approx(0.5 - (0.61 - 0.5), abs=1e-9)
