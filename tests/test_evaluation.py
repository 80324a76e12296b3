"""Tests for orchestrator.evaluation.coco against a small hand-built COCO ground truth."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from orchestrator.evaluation.coco import (
    METRIC_NAMES,
    PR_IOUS,
    CocoEvaluator,
    format_metrics_table,
)

# Non-contiguous on purpose: contiguous label k maps to CATEGORY_IDS[k].
CATEGORY_IDS = [1, 3, 7]

# (image_id, category_id, [x, y, w, h], iscrowd); areas cover small (<32²), medium and large.
ANNOTATIONS = [
    (1, 1, [10.0, 10.0, 20.0, 20.0], 0),
    (1, 3, [100.0, 100.0, 60.0, 80.0], 0),
    (1, 7, [300.0, 200.0, 200.0, 150.0], 0),
    (1, 1, [520.0, 20.0, 100.0, 100.0], 1),
    (2, 3, [50.0, 60.0, 120.0, 100.0], 0),
    (2, 1, [400.0, 300.0, 40.0, 50.0], 0),
    (4, 7, [20.0, 30.0, 25.0, 25.0], 0),
    (4, 3, [200.0, 100.0, 150.0, 200.0], 0),
]
IMAGE_IDS = [1, 2, 3, 4]  # image 3 has no annotations


def make_coco() -> COCO:
    """A COCO ground truth built by hand; pycocotools' prints are silenced."""
    dataset = {
        "images": [
            {"id": i, "width": 320 if i == 3 else 640, "height": 240 if i == 3 else 480}
            for i in IMAGE_IDS
        ],
        "annotations": [
            {
                "id": n + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": crowd,
            }
            for n, (image_id, cat, box, crowd) in enumerate(ANNOTATIONS)
        ],
        "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS],
    }
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def gt_predictions(
    image_ids: list[int] = IMAGE_IDS, shift: bool = False, score: float = 1.0
) -> list[dict]:
    """Non-crowd ground truth as predictions: contiguous labels, pixel xyxy boxes.

    With shift, every box moves by half its width and height (IoU 1/7 with its GT box).
    """
    preds = []
    for image_id in image_ids:
        rows = [a for a in ANNOTATIONS if a[0] == image_id and a[3] == 0]
        boxes = torch.tensor([box for _, _, box, _ in rows], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy, [N, 4]
        if shift:
            half = (boxes[:, 2:] - boxes[:, :2]) / 2  # [N, 2]
            boxes = boxes + half.repeat(1, 2)
        preds.append(
            {
                "image_id": image_id,
                "boxes": boxes,
                "scores": torch.full((len(rows),), score),
                "labels": torch.tensor(
                    [CATEGORY_IDS.index(cat) for _, cat, _, _ in rows], dtype=torch.int64
                ),
            }
        )
    return preds


@pytest.fixture
def coco() -> COCO:
    return make_coco()


def test_ground_truth_as_predictions_is_perfect(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(gt_predictions())
    metrics = evaluator.compute()
    assert set(metrics) == set(METRIC_NAMES)
    assert all(isinstance(v, float) for v in metrics.values())
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name


def test_wrong_label_mapping_lowers_ap(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, [3, 7, 1])
    evaluator.update(gt_predictions())
    assert evaluator.compute()["AP"] < 0.5


def test_shifted_boxes_lower_ap(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(gt_predictions(shift=True))
    metrics = evaluator.compute()
    assert metrics["AP"] < 0.5
    assert metrics["AP50"] < 0.5


def test_empty_predictions_give_zeros(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    empty = [
        {
            "image_id": i,
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
        for i in IMAGE_IDS
    ]
    evaluator.update(empty)
    assert evaluator.num_images == len(IMAGE_IDS)
    assert evaluator.compute() == dict.fromkeys(METRIC_NAMES, 0.0)


def test_no_updates_give_zeros(coco: COCO) -> None:
    assert CocoEvaluator(coco, CATEGORY_IDS).compute() == dict.fromkeys(METRIC_NAMES, 0.0)


def test_seen_image_without_predictions_counts(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    preds = gt_predictions()
    # Image 4's GT is never predicted but it was seen, so its boxes count as misses.
    preds[3] = {
        "image_id": 4,
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    evaluator.update(preds)
    assert evaluator.compute()["AR100"] < 1.0


def test_duplicate_image_ids_keep_first(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(gt_predictions())
    evaluator.update(gt_predictions())
    # A later, worse copy of the same images must be ignored too.
    evaluator.update(gt_predictions(shift=True))
    assert evaluator.num_images == len(IMAGE_IDS)
    assert len(evaluator.results()) == sum(1 for a in ANNOTATIONS if a[3] == 0)
    assert evaluator.compute()["AP"] == pytest.approx(1.0)


def test_subset_of_images(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(gt_predictions([1, 3]))
    metrics = evaluator.compute()
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)


def test_missing_area_range_is_minus_one(coco: COCO) -> None:
    # Image 2 has only medium and large boxes, so small-area AP has no ground truth.
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(gt_predictions([2]))
    metrics = evaluator.compute()
    assert metrics["APs"] == -1.0
    assert metrics["AP"] == pytest.approx(1.0)


def test_results_format_and_json_round_trip(coco: COCO, tmp_path: Path) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(gt_predictions([2]))
    evaluator.update(
        [
            {
                "image_id": 1,
                "boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
                "scores": torch.tensor([0.25, 0.75]),
                "labels": torch.tensor([2, 1]),
            }
        ]
    )
    results = evaluator.results()
    assert [r["image_id"] for r in results] == [1, 1, 2, 2]
    # Within an image: highest score first, original category ids, xywh boxes.
    assert results[0] == {
        "image_id": 1,
        "category_id": 3,
        "bbox": [0.0, 0.0, 5.0, 5.0],
        "score": 0.75,
    }
    assert results[1] == {
        "image_id": 1,
        "category_id": 7,
        "bbox": [10.0, 20.0, 30.0, 40.0],
        "score": 0.25,
    }
    assert {r["category_id"] for r in results[2:]} == {1, 3}

    # compute() must not leak pycocotools' extra keys into the stored records.
    evaluator.compute()
    assert evaluator.results() == results

    out = evaluator.write_results(tmp_path / "nested" / "results.json")
    assert out == tmp_path / "nested" / "results.json"
    assert json.loads(out.read_text()) == results
    assert [p.name for p in out.parent.iterdir()] == ["results.json"]


def test_reset_forgets_everything(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(gt_predictions())
    evaluator.reset()
    assert evaluator.results() == []
    assert evaluator.compute() == dict.fromkeys(METRIC_NAMES, 0.0)


def test_validation_errors(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    good = gt_predictions([1])[0]
    with pytest.raises(ValueError, match="999"):
        evaluator.update([{**good, "image_id": 999}])
    with pytest.raises(ValueError, match="label"):
        evaluator.update([{**good, "labels": torch.tensor([0, 1, 3])}])
    with pytest.raises(ValueError, match="label"):
        evaluator.update([{**good, "labels": torch.tensor([0, -1, 2])}])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        evaluator.update([{**good, "boxes": torch.zeros(3, 5)}])
    with pytest.raises(ValueError, match="same N"):
        evaluator.update([{**good, "scores": torch.ones(2)}])
    with pytest.raises(ValueError, match="missing"):
        evaluator.update([{"image_id": 1, "boxes": torch.zeros(0, 4)}])
    with pytest.raises(ValueError, match="999"):
        evaluator.update([good, {**good, "image_id": 999}])
    # Nothing from a rejected prediction is kept.
    assert evaluator.num_images == 0
    with pytest.raises(ValueError, match="not in the ground truth"):
        CocoEvaluator(coco, [1, 2, 3])


def test_format_metrics_table() -> None:
    metrics = {"AP": 0.41234, "AP50": 0.6, "AP75": 0.4, "APs": -1.0, "APm": 0.3, "APl": 0.5}
    metrics["AR100"] = 0.55
    table = format_metrics_table(metrics, title="val")
    lines = table.splitlines()
    assert lines[0] == "val"
    for name in METRIC_NAMES:
        assert any(line.split()[0] == name for line in lines[3:]), name
    ap_line = next(line for line in lines if line.startswith("AP "))
    assert "0.412" in ap_line and "IoU=0.50:0.95" in ap_line
    aps_line = next(line for line in lines if line.startswith("APs"))
    assert "n/a" in aps_line and "-1" not in aps_line
    assert "AP50" in table and "IoU=0.50 " in table


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        evaluator = CocoEvaluator(make_coco(), CATEGORY_IDS)
        # Rank 0 sees images 1, 2; rank 1 sees 3, 4 plus a shifted padded copy of image 1,
        # which must lose to rank 0's first copy.
        mine = [1, 2] if rank == 0 else [3, 4]
        evaluator.update(gt_predictions(mine))
        if rank == 1:
            evaluator.update(gt_predictions([1], shift=True))
        metrics = evaluator.compute()
        ap = evaluator.compute_details().ap
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({**metrics, "per_class": ap}))
    finally:
        dist.destroy_process_group()


def test_distributed_gather(tmp_path: Path) -> None:
    world_size = 2
    mp.spawn(
        _distributed_worker,
        args=(world_size, str(tmp_path / "init"), str(tmp_path)),
        nprocs=world_size,
        join=True,
    )
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert per_rank[0] == per_rank[1]
    assert per_rank[0]["AP"] == pytest.approx(1.0)
    assert per_rank[0]["AR100"] == pytest.approx(1.0)
    assert per_rank[0]["per_class"] == {"0": 1.0, "1": 1.0, "2": 1.0}


def mixed_predictions() -> list[dict]:
    """Predictions of every quality: class-1 boxes nudged by a tenth of their size (IoU about
    0.8), image 1's class-3 box moved off its object, a confident false class-7 box on image 2."""
    preds = gt_predictions(score=0.5)
    for pred in preds:
        boxes = pred["boxes"]  # [N, 4] xyxy
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # [N, 4]
        nudge = pred["labels"] == CATEGORY_IDS.index(1)
        boxes[nudge] += 0.1 * size[nudge]
        if pred["image_id"] == 1:
            moved = pred["labels"] == CATEGORY_IDS.index(3)
            boxes[moved] += 0.6 * size[moved]
    extra = preds[1]  # image 2
    extra["boxes"] = torch.cat([extra["boxes"], torch.tensor([[500.0, 10.0, 600.0, 100.0]])])
    extra["scores"] = torch.cat([extra["scores"], torch.tensor([0.9])])
    extra["labels"] = torch.cat([extra["labels"], torch.tensor([CATEGORY_IDS.index(7)])])
    return preds


def pycocotools_per_category(coco: COCO, results: list[dict]) -> dict[int, tuple[float, float]]:
    """(AP, AP50) of each category from a COCOeval restricted to that one category."""
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes([dict(r) for r in results])
        for category in CATEGORY_IDS:
            coco_eval = COCOeval(coco, detections, iouType="bbox")
            coco_eval.params.imgIds = IMAGE_IDS
            coco_eval.params.catIds = [category]
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            out[category] = (float(coco_eval.stats[0]), float(coco_eval.stats[1]))
    return out


def test_per_class_ap_matches_pycocotools_per_category(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(mixed_predictions())
    details = evaluator.compute_details()
    assert details.metrics == evaluator.compute()

    expected = pycocotools_per_category(coco, evaluator.results())
    for label, category in enumerate(CATEGORY_IDS):
        assert details.ap[label] == pytest.approx(expected[category][0]), category
        assert details.ap50[label] == pytest.approx(expected[category][1]), category
    # Nudged class-1 boxes fail the strict IoU thresholds only, so AP sits between 0 and AP50.
    assert 0.0 < details.ap[0] < details.ap50[0] == pytest.approx(1.0)
    assert details.ap[1] < 1.0 and details.ap[2] < 1.0
    # Every class has ground truth, so the mean AP is the mean of the per-class APs.
    assert sum(details.ap.values()) / 3 == pytest.approx(details.metrics["AP"])
    assert sum(details.ap50.values()) / 3 == pytest.approx(details.metrics["AP50"])
    # ...and the class-averaged PR curves average to AP50 and AP75.
    for iou, name in zip(PR_IOUS, ("AP50", "AP75"), strict=True):
        curve = details.precision[iou]
        assert sum(curve) / len(curve) == pytest.approx(details.metrics[name]), name


def test_per_class_ap_perfect_missing_and_absent(coco: COCO) -> None:
    # Image 2 holds one class-1 and one class-3 box and no class-7 box.
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    pred = gt_predictions([2])[0]
    only_class3 = pred["labels"] == CATEGORY_IDS.index(3)
    evaluator.update(
        [{**{k: pred[k][only_class3] for k in ("boxes", "scores", "labels")}, "image_id": 2}]
    )
    details = evaluator.compute_details()
    assert details.ap[1] == pytest.approx(1.0) and details.ap50[1] == pytest.approx(1.0)
    assert details.ap[0] == 0.0 and details.ap50[0] == 0.0  # ground truth, no prediction
    assert math.isnan(details.ap[2]) and math.isnan(details.ap50[2])  # no ground truth
    assert details.gt_boxes == {0: 1, 1: 1, 2: 0}
    # Averaged over the two classes with ground truth: one perfect, one never found.
    assert details.precision[0.5] == pytest.approx([0.5] * 101)


def test_pr_curve_of_perfect_predictions(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(gt_predictions())
    details = evaluator.compute_details()
    assert len(details.recall) == 101
    assert details.recall[0] == 0.0 and details.recall[-1] == pytest.approx(1.0)
    for iou in PR_IOUS:
        assert details.precision[iou] == pytest.approx([1.0] * 101), iou
    # The crowd box of image 1 is not counted.
    assert details.gt_boxes == {0: 2, 1: 3, 2: 2}


def test_pr_curve_falls_with_a_confident_false_positive(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(mixed_predictions())
    curve = evaluator.compute_details().precision[0.5]
    # Class 7's best-scored box is wrong, so its precision is below 1 even at low recall.
    assert curve[0] < 1.0


def test_details_without_predictions(coco: COCO) -> None:
    evaluator = CocoEvaluator(coco, CATEGORY_IDS)
    evaluator.update(
        [
            {
                "image_id": i,
                "boxes": torch.zeros(0, 4),
                "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64),
            }
            for i in (2, 3)
        ]
    )
    details = evaluator.compute_details()
    assert details.metrics == dict.fromkeys(METRIC_NAMES, 0.0)
    assert details.ap[0] == 0.0 and details.ap[1] == 0.0 and math.isnan(details.ap[2])
    assert details.gt_boxes == {0: 1, 1: 1, 2: 0}
    assert len(details.recall) == 101
    assert details.precision[0.75] == [0.0] * 101
