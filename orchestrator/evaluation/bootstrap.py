"""COCO AP with intervals: the bootstrap over validation images.

`ImageMatches.from_detections` runs pycocotools' per-image matching once (COCOeval.evaluate,
area "all", 100 detections per image); `ap(weights)` then re-accumulates AP@[.5:.95] for any
weighting of the images, the way COCOeval.accumulate does (101 recall points, precision made
monotone, classes without ground truth left out). A bootstrap draw weights each image by how
often it was drawn, so no image is evaluated twice. With every weight 1 it is pycocotools'
AP. Paired intervals (`paired_interval`) apply the same draws to two models' detections on the
same images, so the interval is of the difference, not of two noisy values.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import sparse

DRAWS = 1000


@dataclass
class _ClassMatches:
    """One class's detections over all images, by descending score, kept as what AP needs:
    per IoU threshold, the image of each true positive and, for each true positive, the false
    positives ranked between it and the one before, counted per image (a sparse [N, m]
    matrix), so a weighting of the images costs one sparse product per threshold."""

    true_images: list[np.ndarray]  # per threshold: [m] image index of each true positive
    false_before: list[sparse.csr_matrix]  # per threshold: [N, m] false positives per image
    gt_per_image: np.ndarray  # [N] non-ignored ground truth per image

    @classmethod
    def build(cls, image: np.ndarray, hit: np.ndarray, gt: np.ndarray) -> _ClassMatches:
        """`image` [D] of each ranked detection, `hit` [T, D] +1 true / -1 false / 0 ignored."""
        true_images, false_before = [], []
        for row in hit:
            true_at = np.flatnonzero(row > 0)
            false_at = np.flatnonzero(row < 0)
            before = np.searchsorted(true_at, false_at)  # the true positive each one precedes
            keep = before < len(true_at)  # those after the last true positive never count
            counts = sparse.coo_matrix(
                (np.ones(keep.sum()), (image[false_at[keep]], before[keep])),
                shape=(len(gt), len(true_at)),
            )
            true_images.append(image[true_at])
            false_before.append(counts.tocsr())
        return cls(true_images, false_before, gt)


@dataclass
class ImageMatches:
    """Per-image matching of one model's detections, ready to re-accumulate under weights."""

    image_ids: list[int]
    classes: list[_ClassMatches]
    recall_points: np.ndarray

    @classmethod
    def from_detections(cls, coco_gt: COCO, detections: list[dict]) -> ImageMatches:
        """Match `detections` (COCO result records) to `coco_gt` with pycocotools."""
        image_ids = sorted(coco_gt.getImgIds())
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(detections) if detections else COCO()
            evaluation = COCOeval(coco_gt, coco_dt, "bbox")
            evaluation.params.imgIds = image_ids
            evaluation.evaluate()
        params = evaluation.params
        max_det = params.maxDets[-1]
        num_images, num_areas = len(image_ids), len(params.areaRng)
        thresholds = len(params.iouThrs)
        classes = []
        for k in range(len(params.catIds)):
            start = k * num_areas * num_images  # area "all" is the first range
            records = evaluation.evalImgs[start : start + num_images]
            gt = np.zeros(num_images)
            images, scores, matched, ignored = [], [], [], []
            for n, record in enumerate(records):
                if record is None:
                    continue
                gt[n] = np.count_nonzero(np.asarray(record["gtIgnore"]) == 0)
                found = np.asarray(record["dtScores"][:max_det])
                images.append(np.full(len(found), n))
                scores.append(found)
                matched.append(record["dtMatches"][:, :max_det])
                ignored.append(record["dtIgnore"][:, :max_det])
            if not gt.any():
                continue  # no ground truth: pycocotools leaves the class out
            if scores:
                order = np.argsort(-np.concatenate(scores), kind="mergesort")
                hit = np.concatenate(matched, axis=1)[:, order] != 0
                skip = np.concatenate(ignored, axis=1)[:, order] != 0
                image = np.concatenate(images)[order]
            else:
                hit = skip = np.zeros((thresholds, 0), bool)
                image = np.zeros(0, int)
            outcome = np.where(skip, 0, np.where(hit, 1, -1))
            classes.append(_ClassMatches.build(image, outcome, gt))
        return cls(image_ids, classes, np.asarray(params.recThrs))

    def ap(self, weights: np.ndarray | None = None) -> np.ndarray:
        """AP@[.5:.95] under image weights [B, N] (or all ones): [B]."""
        if weights is None:
            weights = np.ones((1, len(self.image_ids)))
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        if not self.classes:  # no ground truth at all
            return np.full(len(weights), np.nan)
        per_class = np.stack([self._class_ap(c, weights) for c in self.classes])  # [K, B]
        # a class none of whose ground truth was drawn is left out, as pycocotools would
        with np.errstate(all="ignore"):
            return np.nanmean(per_class, axis=0)

    def _class_ap(self, c: _ClassMatches, weights: np.ndarray) -> np.ndarray:
        """Mean precision over thresholds and recall points of one class: [B].

        Only true positives matter: precision peaks at them, recall moves only at them. At the
        k-th, under weights w: tp = the w of true positives 1..k, fp = the w of the false
        positives ranked before it; recall point j takes the best precision at or after the
        first true positive whose recall reaches it (COCOeval.accumulate)."""
        positives = weights @ c.gt_per_image  # [B]
        total = np.zeros(len(weights))
        for images, false_before in zip(c.true_images, c.false_before, strict=True):
            if images.size == 0:
                continue
            tp = np.cumsum(weights[:, images], axis=1)  # [B, m]
            fp = np.cumsum(np.asarray((false_before.T @ weights.T).T), axis=1)
            precision = tp / (tp + fp + np.spacing(1))
            best_after = np.flip(np.maximum.accumulate(np.flip(precision, 1), axis=1), 1)
            with np.errstate(all="ignore"):  # a draw without this class's ground truth
                recall = tp / positives[:, None]
            reached = np.searchsorted(self.recall_points, recall, side="right")  # [B, m]
            newly = np.diff(reached, axis=1, prepend=0)  # recall points first reached here
            total += (best_after * newly).sum(axis=1)
        out = total / (len(c.true_images) * len(self.recall_points))
        out[positives <= 0] = np.nan
        return out


def draws(num_images: int, count: int = DRAWS, seed: int = 0) -> np.ndarray:
    """Bootstrap weights [count, num_images]: how often each image is drawn (with replacement)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num_images, size=(count, num_images))
    return np.stack([np.bincount(row, minlength=num_images) for row in picks]).astype(float)


def bootstrap_ap(runs: list[ImageMatches], weights: np.ndarray) -> np.ndarray:
    """AP of each run under each draw: [runs, B]."""
    return np.stack([run.ap(weights) for run in runs])


def interval(values: np.ndarray, estimate: float, level: float = 0.95) -> tuple[float, float]:
    """The basic (reverse percentile) bootstrap interval of `estimate`: [2 e - q_high, 2 e - q_low].

    Interpolated AP is biased upward on resampled sets (the precision envelope is a running max
    of a noisier curve: the draws' median sits above the full set's AP), so
    the plain percentile interval would sit too high; the basic interval removes that shift."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(2 * estimate - high), float(2 * estimate - low)


def paired_interval(
    a: ImageMatches, b: ImageMatches, weights: np.ndarray, level: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """AP(a) - AP(b) on all images, and its bootstrap interval over `weights` draws."""
    if a.image_ids != b.image_ids:
        raise ValueError("paired bootstrap needs both runs evaluated on the same images")
    delta = float(a.ap()[0] - b.ap()[0])
    both = bootstrap_ap([a, b], weights)
    return delta, interval(both[0] - both[1], delta, level)
