"""Validation samples as one mosaic image with a legend, for MLflow.

Evaluation images are often 64-128 px, too small for readable boxes and labels. Each sample is
upscaled by an integer factor first (nearest neighbour, so the pixels the model saw stay
visible), and boxes and labels are drawn at that resolution. Ground truth is a dashed white and
black outline, visible on any background; predictions are solid boxes in class colours with a
``"name 0.87"`` label. A legend strip under the grid explains both and gives each class colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.ops import box_convert

from orchestrator.evaluation.drawing import (
    class_color,
    denormalize_image,
    label_text,
    visible_boxes,
)

TILE_GAP = 8  # pixels between tiles and around the grid
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)
_GT_LIGHT = (255, 255, 255)
_GT_DARK = (0, 0, 0)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def sample_mosaic(
    samples: list[dict],
    class_names: Sequence[str],
    min_side: int = 384,
    columns: int | None = None,
    score_threshold: float = 0.3,
) -> np.ndarray:
    """Draw evaluation samples in a grid with a legend; returns a uint8 [H, W, 3] array.

    Each sample is a dict from the training engine: ``image`` (float [3, h, w], ImageNet
    normalised), ``prediction`` (``boxes`` pixel xyxy of that image, ``labels``, ``scores``) and
    ``target`` (``boxes`` normalised cxcywh, ``labels``). Each image is upscaled by the smallest
    integer factor that makes its short side at least ``min_side`` (larger images stay as they
    are). ``columns`` defaults to a near-square grid. Predictions below ``score_threshold`` are
    not drawn.
    """
    if not samples:
        raise ValueError("sample_mosaic needs at least one sample, got an empty list")
    if min_side < 1:
        raise ValueError(f"min_side must be at least 1, got {min_side}")
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    images = [denormalize_image(s["image"]) for s in samples]  # uint8 [3, h, w] each
    factors = [_upscale_factor(int(im.shape[1]), int(im.shape[2]), min_side) for im in images]
    short = min(min(im.shape[1:]) * f for im, f in zip(images, factors, strict=True))
    # Text and lines grow with the tiles, so they read the same when MLflow shrinks the mosaic.
    font_size = max(10, round(short / 28))
    line_width = max(2, round(short / 128))
    font = ImageFont.load_default(size=font_size)
    tiles = [
        _draw_tile(sample, image, factor, class_names, score_threshold, font, line_width)
        for sample, image, factor in zip(samples, images, factors, strict=True)
    ]
    grid = _grid(tiles, columns or math.ceil(math.sqrt(len(tiles))))
    legend = _legend(grid.width, class_names, score_threshold, font, line_width)
    mosaic = Image.new("RGB", (grid.width, grid.height + legend.height), _BACKGROUND)
    mosaic.paste(grid, (0, 0))
    mosaic.paste(legend, (0, grid.height))
    return np.array(mosaic)  # [H, W, 3] uint8


def _upscale_factor(height: int, width: int, min_side: int) -> int:
    return max(1, math.ceil(min_side / max(1, min(height, width))))


def _draw_tile(
    sample: dict,
    image: torch.Tensor,
    factor: int,
    class_names: Sequence[str],
    score_threshold: float,
    font: Font,
    line_width: int,
) -> Image.Image:
    """One sample upscaled by ``factor``, ground truth under predictions."""
    height, width = int(image.shape[1]) * factor, int(image.shape[2]) * factor
    tile = Image.fromarray(image.permute(1, 2, 0).numpy())  # [h, w, 3]
    tile = tile.resize((width, height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(tile)

    target = sample["target"]
    gt = torch.as_tensor(target["boxes"]).detach().cpu().to(torch.float32).reshape(-1, 4)
    gt = box_convert(gt, "cxcywh", "xyxy") * torch.tensor([width, height, width, height])
    gt, gt_keep = visible_boxes(gt, height, width)
    for box in gt[gt_keep].round().int().tolist():
        _dashed_rectangle(draw, box, line_width)

    pred = sample["prediction"]
    boxes = torch.as_tensor(pred["boxes"]).detach().cpu().to(torch.float32).reshape(-1, 4)
    boxes, keep = visible_boxes(boxes * factor, height, width)
    scores = torch.as_tensor(pred["scores"]).detach().cpu().to(torch.float32).reshape(-1)
    labels = torch.as_tensor(pred["labels"]).detach().cpu().reshape(-1)
    keep &= scores >= score_threshold
    # Lowest score first so the most confident boxes and labels end up on top.
    order = [i for i in scores.argsort().tolist() if keep[i]]
    for i in order:
        box = boxes[i].round().int().tolist()
        draw.rectangle(box, outline=class_color(int(labels[i])), width=line_width)
    # Labels after every box, so no box line crosses a label.
    for i in order:
        label = int(labels[i])
        text = f"{label_text(label, class_names)} {float(scores[i]):.2f}"
        x1, y1 = boxes[i, :2].round().int().tolist()
        _label(draw, (x1, y1), text, class_color(label), font, width)
    return tile


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: list[int], width: int) -> None:
    """A dark outline with white dashes over it: visible on light and dark images alike, and
    unlike any solid class-coloured prediction box."""
    x1, y1, x2, y2 = box
    draw.rectangle((x1, y1, x2, y2), outline=_GT_DARK, width=width)
    dash = 3 * width
    for start in range(x1, x2 + 1, 2 * dash):
        end = min(start + dash - 1, x2)
        draw.rectangle((start, y1, end, y1 + width - 1), fill=_GT_LIGHT)
        draw.rectangle((start, y2 - width + 1, end, y2), fill=_GT_LIGHT)
    for start in range(y1, y2 + 1, 2 * dash):
        end = min(start + dash - 1, y2)
        draw.rectangle((x1, start, x1 + width - 1, end), fill=_GT_LIGHT)
        draw.rectangle((x2 - width + 1, start, x2, end), fill=_GT_LIGHT)


def _label(
    draw: ImageDraw.ImageDraw,
    corner: tuple[int, int],
    text: str,
    color: tuple[int, int, int],
    font: Font,
    tile_width: int,
) -> None:
    """Black text on a class-coloured patch just above the box's top-left corner (inside the
    box when there is no room above), kept within the tile horizontally."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    patch_w, patch_h = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = corner
    x = max(0, min(x, tile_width - patch_w))
    if y - patch_h >= 0:
        y -= patch_h
    draw.rectangle((x, y, x + patch_w - 1, y + patch_h - 1), fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=(0, 0, 0), font=font)


def _grid(tiles: list[Image.Image], columns: int) -> Image.Image:
    """Tiles row by row, centred in equal cells (the largest tile's size), TILE_GAP apart."""
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    cell_w = max(t.width for t in tiles)
    cell_h = max(t.height for t in tiles)
    grid = Image.new(
        "RGB",
        (columns * cell_w + (columns + 1) * TILE_GAP, rows * cell_h + (rows + 1) * TILE_GAP),
        _BACKGROUND,
    )
    for n, tile in enumerate(tiles):
        row, col = divmod(n, columns)
        x = TILE_GAP + col * (cell_w + TILE_GAP) + (cell_w - tile.width) // 2
        y = TILE_GAP + row * (cell_h + TILE_GAP) + (cell_h - tile.height) // 2
        grid.paste(tile, (x, y))
    return grid


def _legend(
    width: int,
    class_names: Sequence[str],
    score_threshold: float,
    font: Font,
    line_width: int,
) -> Image.Image:
    """A strip ``width`` wide: the ground-truth and prediction box styles on the first line,
    then one colour swatch and name per class, wrapped to the width."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = probe.textbbox((0, 0), "Ag", font=font)[3]
    line_h = text_h + TILE_GAP + 2
    swatch = text_h  # square swatch as tall as the text
    spacing = 2 * swatch

    def text_w(text: str) -> int:
        return math.ceil(probe.textlength(text, font=font))

    # (kind, text, colour) items; "newline" starts the class swatches on a fresh line.
    keys = [
        ("gt", "ground truth", None),
        ("pred", f"prediction: class colour, name score (score >= {score_threshold:.2f})", None),
        ("newline", "", None),
    ]
    classes = [("class", str(name), class_color(k)) for k, name in enumerate(class_names)]
    placed: list[tuple[int, int, str, str, tuple[int, int, int] | None]] = []
    x, y = TILE_GAP, 0
    for kind, text, color in keys + classes:
        if kind == "newline":
            x, y = TILE_GAP, y + line_h
            continue
        item_w = 2 * swatch + TILE_GAP // 2 + text_w(text)
        if x > TILE_GAP and x + item_w > width - TILE_GAP:
            x, y = TILE_GAP, y + line_h
        placed.append((x, y, kind, text, color))
        x += item_w + spacing
    legend = Image.new("RGB", (width, y + line_h + TILE_GAP), _BACKGROUND)
    draw = ImageDraw.Draw(legend)
    for x, y, kind, text, color in placed:
        top = y + (line_h - swatch) // 2
        box = [x, top, x + 2 * swatch - 1, top + swatch - 1]
        if kind == "gt":
            _dashed_rectangle(draw, box, line_width)
        elif kind == "pred":
            draw.rectangle(box, outline=_TEXT, width=line_width)
        else:
            draw.rectangle(box, fill=color)
        left, top_t, _, bottom_t = draw.textbbox((0, 0), text, font=font)
        text_y = y + (line_h - (bottom_t - top_t)) // 2 - top_t
        draw.text((x + 2 * swatch + TILE_GAP // 2 - left, text_y), text, fill=_TEXT, font=font)
    return legend
