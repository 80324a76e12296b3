"""COCO box evaluation on top of pycocotools' COCOeval.

Predictions arrive per image in the model's contiguous label space and pixel xyxy boxes of the
original image; they are stored in COCO results format (original category ids, xywh boxes) so
the same records feed both COCOeval and the results json written as an artifact.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params
from torchvision.ops import box_convert

import orchestrator.data.quiet_coco  # noqa: F401  (silences pycocotools)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")

# Positions of METRIC_NAMES in COCOeval.stats (index 8 is recall with maxDets=100, all areas).
_STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}

_DESCRIPTIONS = {
    "AP": "precision  IoU=0.50:0.95  area=all     maxDets=100",
    "AP50": "precision  IoU=0.50       area=all     maxDets=100",
    "AP75": "precision  IoU=0.75       area=all     maxDets=100",
    "APs": "precision  IoU=0.50:0.95  area=small   maxDets=100",
    "APm": "precision  IoU=0.50:0.95  area=medium  maxDets=100",
    "APl": "precision  IoU=0.50:0.95  area=large   maxDets=100",
    "AR100": "recall     IoU=0.50:0.95  area=all     maxDets=100",
}

_REQUIRED_KEYS = ("image_id", "boxes", "scores", "labels")

PR_IOUS = (0.5, 0.75)  # IoU thresholds of EvalDetails.precision


@dataclass(frozen=True)
class EvalDetails:
    """One COCOeval run in detail (area all, maxDets 100 throughout).

    ``metrics`` is what compute() returns. ``ap``, ``ap50`` and ``gt_boxes`` are keyed by
    contiguous label (0..K-1, as in label_to_category): AP at IoU .50:.95 and at IoU .50, and the
    number of non-crowd ground-truth boxes in the evaluated images. A class with no such box has
    AP NaN (pycocotools marks it -1 and leaves it out of the mean AP). ``recall`` holds COCOeval's
    101 recall thresholds (0, 0.01, ..., 1); ``precision[iou]``, for iou in PR_IOUS, the
    interpolated precision at each of them, averaged over the classes that have ground truth
    (NaN throughout when none has). The mean of ``precision[0.5]`` is the AP50 metric when every
    ground-truth category is in label_to_category.
    """

    metrics: dict[str, float]
    ap: dict[int, float]
    ap50: dict[int, float]
    gt_boxes: dict[int, int]
    recall: list[float]
    precision: dict[float, list[float]]


class CocoEvaluator:
    """Accumulates per-image predictions and computes COCO box metrics.

    ``label_to_category[k]`` is the original COCO category id of contiguous label ``k``; COCO ids
    may have gaps (e.g. ``[1, 3, 7]``), so results are always written with the original ids.
    """

    def __init__(self, coco_gt: COCO, label_to_category: Sequence[int]) -> None:
        mapping = [int(c) for c in label_to_category]
        if not mapping:
            raise ValueError("label_to_category must not be empty")
        if len(set(mapping)) != len(mapping):
            raise ValueError(f"label_to_category has repeated category ids: {mapping}")
        unknown = sorted(set(mapping) - set(coco_gt.getCatIds()))
        if unknown:
            raise ValueError(f"label_to_category has ids not in the ground truth: {unknown}")
        self.coco_gt = coco_gt
        self.label_to_category = mapping
        # image_id -> COCO result records; an entry with an empty list is a seen image with no
        # predictions, which must still count as evaluated.
        self._per_image: dict[int, list[dict[str, Any]]] = {}
        self.last_details: EvalDetails | None = None  # of the latest compute()

    @property
    def num_images(self) -> int:
        """Number of distinct images seen by update() on this process."""
        return len(self._per_image)

    def update(self, predictions: list[dict]) -> None:
        """Add predictions for a batch of images.

        Each dict holds ``image_id`` (int), ``boxes`` ([N, 4] pixel xyxy in the original image),
        ``scores`` ([N]) and ``labels`` ([N] contiguous ints). An image id already seen is
        ignored: DistributedSampler pads the last batch by repeating samples.
        """
        # Validate the whole batch before keeping any of it, so a bad batch leaves no trace.
        staged: dict[int, list[dict[str, Any]]] = {}
        for pred in predictions:
            missing = [k for k in _REQUIRED_KEYS if k not in pred]
            if missing:
                raise ValueError(f"prediction is missing keys {missing}; got {sorted(pred)}")
            image_id = _as_image_id(pred["image_id"])
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"image_id {image_id} is not in the ground-truth annotations")
            if image_id in self._per_image or image_id in staged:
                continue
            staged[image_id] = self._to_records(image_id, pred)
        self._per_image.update(staged)

    def _to_records(self, image_id: int, pred: dict) -> list[dict[str, Any]]:
        boxes = torch.as_tensor(pred["boxes"]).detach().cpu()
        scores = torch.as_tensor(pred["scores"]).detach().cpu()
        labels = torch.as_tensor(pred["labels"]).detach().cpu()
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"boxes for image {image_id} must have shape [N, 4], got {list(boxes.shape)}"
            )
        n = boxes.shape[0]
        if scores.shape != (n,) or labels.shape != (n,):
            raise ValueError(
                f"image {image_id}: boxes {list(boxes.shape)}, scores {list(scores.shape)} and "
                f"labels {list(labels.shape)} must describe the same N predictions"
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels for image {image_id} must be integers, got {labels.dtype}")
        if n == 0:
            return []
        num_classes = len(self.label_to_category)
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            raise ValueError(
                f"image {image_id}: label {int(bad[0])} is outside [0, {num_classes}) "
                "(label_to_category has that many entries)"
            )
        # float64 keeps the float32 coordinates exact through tolist() and json.
        xywh = box_convert(boxes.to(torch.float64), in_fmt="xyxy", out_fmt="xywh")  # [N, 4]
        return [
            {
                "image_id": image_id,
                "category_id": self.label_to_category[label],
                "bbox": box,
                "score": score,
            }
            for box, score, label in zip(
                xywh.tolist(), scores.to(torch.float64).tolist(), labels.tolist(), strict=True
            )
        ]

    def _gathered(self) -> dict[int, list[dict[str, Any]]]:
        """Every rank's per-image records when distributed, else this process's."""
        if not (dist.is_available() and dist.is_initialized()):
            return self._per_image
        payload = list(self._per_image.items())
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, payload)
        merged: dict[int, list[dict[str, Any]]] = {}
        # Rank order decides which copy of a padded (repeated) image wins, identically on all
        # ranks, so every rank computes the same metrics.
        for rank_payload in gathered:
            for image_id, records in rank_payload:
                merged.setdefault(image_id, records)
        return merged

    @staticmethod
    def _sorted(per_image: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        records = [r for recs in per_image.values() for r in recs]
        # Score ties are broken by category and box so the order never depends on arrival order.
        records.sort(key=lambda r: (r["image_id"], -r["score"], r["category_id"], tuple(r["bbox"])))
        return records

    def results(self) -> list[dict]:
        """This process's predictions in COCO results format, sorted deterministically.

        Each record is ``{"image_id", "category_id" (original id), "bbox" [x, y, w, h],
        "score"}``; sorted by image id, then descending score.
        """
        return [dict(r, bbox=list(r["bbox"])) for r in self._sorted(self._per_image)]

    def write_results(self, path: str | os.PathLike) -> Path:
        """Write results() as json; a temp file is renamed into place so readers never see
        a partial file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.results(), f)
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return path

    def compute(self) -> dict[str, float]:
        """Run COCOeval over every image seen by update() and return METRIC_NAMES as floats.

        With an initialised torch.distributed process group this is a collective call: all
        ranks must call it, their predictions are gathered, and all return the same metrics.
        Only seen images are evaluated, so a subset of the dataset can be scored. A metric is
        -1.0 when the seen images have no ground truth in that area range (pycocotools'
        convention). If there are no prediction boxes at all, every metric is 0.0.
        The per-class details of the same evaluation stay in `last_details`.
        """
        self.last_details = self.compute_details()
        return self.last_details.metrics

    def compute_details(self) -> EvalDetails:
        """compute()'s metrics plus per-class AP and precision-recall curves, from one COCOeval
        run; a collective call under torch.distributed, like compute()."""
        per_image = self._gathered()
        records = self._sorted(per_image)
        gt_boxes = self._count_ground_truth(per_image)
        if not records:
            # pycocotools' loadRes cannot take an empty list; with no predictions every class
            # that has ground truth scores 0.
            return _details_without_predictions(gt_boxes)
        # COCOeval prints progress and its own summary; we print format_metrics_table instead.
        with contextlib.redirect_stdout(io.StringIO()):
            # loadRes adds area/id/segmentation keys in place; hand it copies.
            coco_dt = self.coco_gt.loadRes([dict(r) for r in records])
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
            coco_eval.params.imgIds = sorted(per_image)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        metrics = {name: float(coco_eval.stats[i]) for name, i in _STATS_INDEX.items()}
        return _details_from_cocoeval(coco_eval, metrics, self.label_to_category, gt_boxes)

    def _count_ground_truth(self, image_ids: Iterable[int]) -> dict[int, int]:
        """Non-crowd ground-truth boxes per contiguous label in the given images (COCOeval
        ignores crowd boxes)."""
        label_of = {category: k for k, category in enumerate(self.label_to_category)}
        counts = dict.fromkeys(range(len(self.label_to_category)), 0)
        for image_id in image_ids:
            for ann in self.coco_gt.imgToAnns.get(image_id, []):
                label = label_of.get(ann["category_id"])
                if label is not None and not ann.get("iscrowd", 0):
                    counts[label] += 1
        return counts

    def reset(self) -> None:
        """Forget all predictions and seen images."""
        self._per_image = {}


def _details_from_cocoeval(
    coco_eval: COCOeval,
    metrics: dict[str, float],
    label_to_category: Sequence[int],
    gt_boxes: dict[int, int],
) -> EvalDetails:
    """Per-class AP and class-averaged PR curves from an accumulated COCOeval."""
    params = coco_eval.params
    # [T, R, K, A, M] -> [T, R, K]: area "all" is index 0, maxDets 100 the last index; entries
    # are -1 where a category has no ground truth in the evaluated images.
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    columns = [list(params.catIds).index(category) for category in label_to_category]
    precision = precision[:, :, columns]  # [T, R, K] in label order
    t50 = _iou_index(params.iouThrs, 0.5)
    ap = {k: _mean_valid(precision[:, :, k]) for k in range(len(columns))}
    ap50 = {k: _mean_valid(precision[t50, :, k]) for k in range(len(columns))}
    with_gt = precision[0, 0, :] > -1  # [K]; a class has ground truth at every threshold or none
    curves = {}
    for iou in PR_IOUS:
        per_class = precision[_iou_index(params.iouThrs, iou)][:, with_gt]  # [R, K with GT]
        if per_class.shape[1]:
            curves[iou] = per_class.mean(axis=1).tolist()
        else:
            curves[iou] = [math.nan] * len(params.recThrs)
    return EvalDetails(
        metrics=metrics,
        ap=ap,
        ap50=ap50,
        gt_boxes=gt_boxes,
        recall=[float(r) for r in params.recThrs],
        precision=curves,
    )


def _details_without_predictions(gt_boxes: dict[int, int]) -> EvalDetails:
    """What compute_details reports when no image has a prediction: metrics 0, AP 0 for classes
    with ground truth (NaN for the rest), precision 0 at every recall threshold."""
    recall = [float(r) for r in Params(iouType="bbox").recThrs]
    per_class = {k: 0.0 if n else math.nan for k, n in gt_boxes.items()}
    curve = [0.0 if any(gt_boxes.values()) else math.nan] * len(recall)
    return EvalDetails(
        metrics=dict.fromkeys(METRIC_NAMES, 0.0),
        ap=per_class,
        ap50=dict(per_class),
        gt_boxes=gt_boxes,
        recall=recall,
        precision={iou: list(curve) for iou in PR_IOUS},
    )


def _iou_index(thresholds: np.ndarray, iou: float) -> int:
    return int(np.argmin(np.abs(np.asarray(thresholds) - iou)))


def _mean_valid(precision: np.ndarray) -> float:
    """Mean of the entries that are not pycocotools' -1 (no ground truth); NaN if none is."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def _as_image_id(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"image_id must be a single integer, got shape {list(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"image_id must be an integer, got {value!r}")
    return int(value)


def format_metrics_table(metrics: dict[str, float], title: str = "COCO box evaluation") -> str:
    """A small aligned text table of the metrics, one row each with a short description.

    Values use 3 decimals; negative values (pycocotools' -1, no ground truth in that area
    range) and NaN are shown as ``n/a``. Metrics outside METRIC_NAMES follow, undescribed.
    """
    names = [n for n in METRIC_NAMES if n in metrics] + [
        n for n in metrics if n not in _DESCRIPTIONS
    ]
    name_width = max([len("metric"), *(len(n) for n in names)])
    lines = [title, f"{'metric':<{name_width}}  {'value':>5}  description"]
    lines.append(f"{'-' * name_width}  {'-' * 5}  {'-' * 11}")
    for name in names:
        value = float(metrics[name])
        shown = "n/a" if math.isnan(value) or value < 0 else f"{value:.3f}"
        lines.append(f"{name:<{name_width}}  {shown:>5}  {_DESCRIPTIONS.get(name, '')}".rstrip())
    return "\n".join(lines)
