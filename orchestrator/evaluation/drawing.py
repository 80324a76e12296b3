"""Draw detections onto images for MLflow artifacts."""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from orchestrator.data.transforms import IMAGENET_MEAN, IMAGENET_STD

_GT_COLOR = (255, 255, 255)
_PRED_WIDTH = 2
_GT_WIDTH = 1


def class_color(label: int) -> tuple[int, int, int]:
    """A bright, stable RGB colour for a class label.

    Hues step by the golden ratio so neighbouring labels get clearly different colours.
    """
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _to_uint8_image(image: Tensor) -> Tensor:
    """uint8 [3, H, W] from uint8 or float-in-[0, 1] [C, H, W] with C in (1, 3)."""
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
        shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a [3, H, W] tensor, got {shape}")
    image = image.detach().cpu()
    if image.is_floating_point():
        image = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)  # [3, H, W] so class colours show
    return image.contiguous()


def visible_boxes(boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Clamp xyxy boxes into the image; return (clamped boxes, mask of boxes kept).

    draw_bounding_boxes rejects boxes with x2 < x1 or y2 < y1, and a box with no area after
    clamping lies outside the image, so such boxes are dropped rather than drawn.
    """
    boxes = torch.as_tensor(boxes).detach().cpu().to(torch.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    finite = torch.isfinite(boxes).all(dim=1)  # [N]
    # The last pixel index is the furthest an outline can be drawn and still be visible.
    clamped = torch.stack(
        [
            boxes[:, 0].clamp(0, width - 1),
            boxes[:, 1].clamp(0, height - 1),
            boxes[:, 2].clamp(0, width - 1),
            boxes[:, 3].clamp(0, height - 1),
        ],
        dim=1,
    )  # [N, 4]
    keep = finite & (clamped[:, 2] > clamped[:, 0]) & (clamped[:, 3] > clamped[:, 1])
    return clamped, keep


def label_text(label: int, class_names: Sequence[str] | None) -> str:
    """The class name of a label, or the label itself when it has no name."""
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def draw_detections(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    gt_boxes: Tensor | None = None,
    gt_labels: Tensor | None = None,
    score_threshold: float = 0.3,
) -> Tensor:
    """Draw predicted (and optionally ground-truth) boxes; returns uint8 [3, H, W].

    ``image`` is uint8 [3, H, W] or float [3, H, W] in [0, 1]; boxes are pixel xyxy in that
    image. Predictions scoring at or above ``score_threshold`` (all of them when ``scores`` is
    None) get a per-class colour and a ``"name 0.87"`` label. Ground truth is drawn underneath
    as thin white boxes, labelled with class names when ``gt_labels`` is given. Boxes are
    clamped to the image and those left with no area are skipped.
    """
    canvas = _to_uint8_image(image)
    height, width = canvas.shape[1:]

    if gt_boxes is not None:
        gt_clamped, gt_keep = visible_boxes(gt_boxes, height, width)
        gt_text = None
        if gt_labels is not None:
            gt_labels = torch.as_tensor(gt_labels).detach().cpu().reshape(-1)
            if gt_labels.shape[0] != gt_clamped.shape[0]:
                raise ValueError(
                    f"gt_labels has {gt_labels.shape[0]} entries for {gt_clamped.shape[0]} gt_boxes"
                )
            gt_text = [label_text(int(k), class_names) for k in gt_labels[gt_keep].tolist()]
        if gt_keep.any():
            canvas = draw_bounding_boxes(
                canvas,
                gt_clamped[gt_keep],
                labels=gt_text,
                colors=_GT_COLOR,
                width=_GT_WIDTH,
            )

    clamped, keep = visible_boxes(boxes, height, width)
    labels = torch.as_tensor(labels).detach().cpu().reshape(-1)
    if labels.shape[0] != clamped.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries for {clamped.shape[0]} boxes")
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu().reshape(-1).to(torch.float32)
        if scores.shape[0] != clamped.shape[0]:
            raise ValueError(f"scores has {scores.shape[0]} entries for {clamped.shape[0]} boxes")
        keep &= scores >= score_threshold
    if not keep.any():
        return canvas

    kept_labels = [int(k) for k in labels[keep].tolist()]
    texts = [label_text(k, class_names) for k in kept_labels]
    if scores is not None:
        texts = [f"{t} {s:.2f}" for t, s in zip(texts, scores[keep].tolist(), strict=True)]
    return draw_bounding_boxes(
        canvas,
        clamped[keep],
        labels=texts,
        colors=[class_color(k) for k in kept_labels],
        width=_PRED_WIDTH,
        # Black text on a box-coloured patch stays readable on busy photos.
        fill_labels=True,
    )


def denormalize_image(
    image: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Undo per-channel normalisation of a float [..., 3, H, W] tensor; returns uint8 of the
    same shape (for drawing training and evaluation batches)."""
    if image.ndim < 3 or image.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"image of shape {list(image.shape)} does not match mean/std of "
            f"{len(mean)}/{len(std)} channels"
        )
    image = image.detach().to(torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=image.device).view(-1, 1, 1)  # [C,1,1]
    std_t = torch.tensor(std, dtype=torch.float32, device=image.device).view(-1, 1, 1)  # [C,1,1]
    pixels = (image * std_t + mean_t).clamp(0.0, 1.0) * 255.0
    return pixels.round().to(torch.uint8)


def save_detections_png(
    path: str | os.PathLike,
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    gt_boxes: Tensor | None = None,
    gt_labels: Tensor | None = None,
    score_threshold: float = 0.3,
) -> Path:
    """draw_detections, then write the result as a PNG, creating parent folders."""
    drawn = draw_detections(
        image, boxes, labels, scores, class_names, gt_boxes, gt_labels, score_threshold
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(path, format="PNG")  # [H, W, 3]
    return path
