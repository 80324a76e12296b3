"""The shapes of the synthetic dataset: unit-sized outlines centred on the origin and their
analytic areas (circles and ellipses are drawn as fine polygons; their area is the true one)."""

from __future__ import annotations

import math

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ellipse", "pentagon", "star")
CIRCLE_VERTICES = 64


def _regular_polygon(count: int, radius: float, start_deg: float = -90.0) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(count) / count)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _ellipse(rx: float, ry: float) -> np.ndarray:
    angles = 2 * np.pi * np.arange(CIRCLE_VERTICES) / CIRCLE_VERTICES
    return np.stack([rx * np.cos(angles), ry * np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer = _regular_polygon(5, 0.5)
    inner = _regular_polygon(5, 0.2, start_deg=-90.0 + 36.0)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


_QUARTER_TURNS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _cross() -> np.ndarray:
    a, b = 1 / 6, 0.5
    quarter = [(-a, -b), (a, -b), (a, -a)]  # one arm's corners, then rotate by 90 degrees
    return np.array([(c * x - s * y, s * x + c * y) for c, s in _QUARTER_TURNS for x, y in quarter])


def _polygon_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


# Unit-sized outlines centred on the origin, with their analytic areas (circles and ellipses are
# drawn as fine polygons but their area is the true one).
OUTLINES: dict[str, np.ndarray] = {
    "circle": _ellipse(0.5, 0.5),
    "square": np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]),
    "triangle": _regular_polygon(3, 1 / math.sqrt(3)),
    "diamond": np.array([(0.0, -0.5), (0.35, 0.0), (0.0, 0.5), (-0.35, 0.0)]),
    "cross": _cross(),
    "ellipse": _ellipse(0.5, 0.3),
    "pentagon": _regular_polygon(5, 0.5),
    "star": _star(),
}
UNIT_AREAS: dict[str, float] = {name: _polygon_area(pts) for name, pts in OUTLINES.items()}
UNIT_AREAS["circle"] = math.pi * 0.25
UNIT_AREAS["ellipse"] = math.pi * 0.5 * 0.3
