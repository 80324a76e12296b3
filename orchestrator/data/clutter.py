"""What makes the shapes harder (all off by default): a texture over the background,
unannotated distractors that look like no class, and the visible boxes of objects that other
objects partly cover. Each draws from the image's own random stream only when it is on, so
the default dataset stays byte for byte what it was."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

MIN_VISIBLE_PX = 12  # an occluded object showing fewer pixels is not annotated


def add_texture(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Blend stripes, a checkerboard or coarse blotches of a second colour into `canvas`
    ([H, W, 3] uint8, in place), at 25-50% opacity."""
    size = canvas.shape[0]
    coords = np.arange(size) + 0.5
    kind = int(rng.integers(0, 3))
    if kind == 0:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        t = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
        pattern = (np.sin(2 * np.pi * t / period) > 0).astype(np.float32)
    elif kind == 1:  # a checkerboard
        period = rng.uniform(6, 20)
        cells = (coords // period).astype(int)
        pattern = ((cells[None, :] + cells[:, None]) % 2).astype(np.float32)
    else:  # blotches: coarse noise, smoothly upsampled
        coarse = rng.uniform(0, 255, (int(rng.integers(3, 8)),) * 2).astype(np.uint8)
        resized = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        pattern = np.asarray(resized, dtype=np.float32) / 255.0
    # a second colour that stands out from the background's mean (else the texture is invisible)
    mean = canvas.reshape(-1, 3).mean(axis=0)
    candidates = rng.uniform(0, 255, (8, 3))
    distance = np.linalg.norm(candidates - mean, axis=1)
    colour = candidates[
        int(np.argmax(distance >= 80)) if (distance >= 80).any() else int(distance.argmax())
    ]
    colour = colour.astype(np.float32)
    alpha = rng.uniform(0.25, 0.5) * pattern[:, :, None]  # [H, W, 1]
    blended = canvas.astype(np.float32) * (1 - alpha) + colour * alpha
    canvas[:] = np.clip(blended.round(), 0, 255).astype(np.uint8)


def add_distractors(rng: np.random.Generator, canvas: np.ndarray, count: int) -> None:
    """Draw `count` unannotated clutter items into `canvas` (in place): irregular blobs
    (7-11 vertices with jittered radii, so they match no class outline) and thick strokes."""
    size = canvas.shape[0]
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, size, 2)
        radius = size * rng.uniform(0.02, 0.12)
        if rng.random() < 0.7:
            vertices = int(rng.integers(7, 12))
            angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
            radii = radius * rng.uniform(0.35, 1.0, vertices)
            points = [
                (float(cx + r * math.cos(a)), float(cy + r * math.sin(a)))
                for a, r in zip(angles, radii, strict=True)
            ]
            draw.polygon(points, fill=colour)
        else:
            theta = rng.uniform(0, 2 * np.pi)
            end = (cx + 2 * radius * math.cos(theta), cy + 2 * radius * math.sin(theta))
            draw.line([(cx, cy), end], fill=colour, width=int(rng.integers(2, 5)))
    canvas[:] = np.asarray(image)


def visible_boxes(owner: np.ndarray, count: int) -> list[tuple[list[float], int] | None]:
    """Per drawn object k (pixels of `owner` equal to k + 1, the last object drawn on each
    pixel): its visible box [x, y, w, h] and visible pixel count, or None when fewer than
    MIN_VISIBLE_PX pixels of it show."""
    boxes: list[tuple[list[float], int] | None] = []
    for k in range(count):
        mask = owner == k + 1
        pixels = int(mask.sum())
        if pixels < MIN_VISIBLE_PX:
            boxes.append(None)
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        boxes.append(([float(x0), float(y0), float(x1 - x0), float(y1 - y0)], pixels))
    return boxes
