"""The export-time parity check: onnxruntime (CPU) runs the written graph on a few images
(`--check-images`, else synthetic ones), at several sizes when the graph is dynamic, and the
largest differences from PyTorch must stay within the tolerance."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from orchestrator.errors import UserInputError

logger = logging.getLogger("detrdistill")
SWAPS = 0.05  # the share of an image's predictions that may differ beyond the tolerance


def check_sizes(height: int, width: int, dynamic: bool) -> list[tuple[int, int]]:
    """The export size, and for a dynamic graph two more of other (odd) sizes and aspects."""
    if not dynamic:
        return [(height, width)]
    return [(height, width), (height * 3 // 4 + 1, width + 37), (height + 29, width * 2 // 3 + 3)]


def check_images(paths: list[Path], batch: int, height: int, width: int) -> torch.Tensor:
    """[batch,3,H,W] RGB in [0, 1]: the given images resized (cycled to fill the batch), or
    a fixed synthetic scene (smooth gradients with bright boxes) when none are given."""
    if paths:
        pixels = []
        for i in range(batch):
            path = paths[i % len(paths)]
            try:
                with Image.open(path) as image:
                    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            except OSError as err:
                raise UserInputError(f"--check-images: cannot read {path} ({err})") from None
            tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None]
            pixels.append(F.interpolate(tensor, size=(height, width), mode="bilinear"))
        return torch.cat(pixels)
    generator = torch.Generator().manual_seed(0)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None]
    plane = torch.ones(height, width)
    scene = torch.stack([ys * xs, (1 - ys) * plane, xs * plane]).expand(batch, -1, -1, -1).clone()
    for b in range(batch):
        for _ in range(4):
            h0, w0 = (torch.rand(2, generator=generator) * 0.6).tolist()
            h1, w1 = h0 + 0.1 + 0.3 * torch.rand(1, generator=generator).item(), w0 + 0.25
            colour = torch.rand(3, 1, 1, generator=generator)
            scene[b, :, int(h0 * height) : int(h1 * height), int(w0 * width) : int(w1 * width)] = (
                colour
            )
    return scene


def check_parity(
    graph: torch.nn.Module, path: Path, example: torch.Tensor, options
) -> dict[str, Any]:
    """Run the ONNX file at `path` and `graph` on the check images; raise UserInputError when a
    difference exceeds `options.tolerance` (beyond the few swapped predictions allowed, see
    `_differences`). Returns the report."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch, _, height, width = example.shape
    rows = []
    for size in check_sizes(height, width, options.dynamic):
        images = check_images(options.check_images, batch, *size)
        with torch.no_grad():
            expected = [t.numpy() for t in graph(images)]
        got = session.run(None, {"images": images.numpy()})
        found = _differences(expected, got, graph.postprocess, size, options.tolerance)
        rows.append({"size": list(size), **found})
    keys = [k for k in rows[0] if k not in ("size", "swapped")]
    worst = {key: max(row[key] for row in rows) for key in keys}
    swapped = max(row["swapped"] for row in rows)
    report = {
        "checked": rows,
        "max_diff": worst,
        "swapped": swapped,
        "tolerance": options.tolerance,
    }
    checked = {k: v for k, v in worst.items() if k != "labels_differ"}  # reported only
    if any(value > options.tolerance for value in checked.values()) or swapped > SWAPS:
        raise UserInputError(
            f"onnxruntime disagrees with PyTorch on the exported graph: max differences {checked} "
            f"(tolerance {options.tolerance}), {swapped:.1%} of an image's predictions beyond it "
            f"(at most {SWAPS:.0%} may be: near-tied query selection), sizes {[r['size'] for r in rows]}; "
            "nothing was written. Try another --opset, or --tolerance if the differences are "
            "acceptable for your deployment"
        )
    return report


def _differences(
    expected, got, postprocess: bool, size: tuple[int, int], tolerance: float
) -> dict[str, float]:
    """Largest differences between the two runtimes' answers, paired as sets per image: models
    that select their queries (two-stage, RT-DETR) may order near-tied ones differently, and
    tied top-k scores may swap ranks, so a pair is the same prediction in another place. Where
    two encoder scores tie at the selection boundary, one runtime may even select another
    token: up to SWAPS of an image's predictions may differ beyond the tolerance (`swapped`,
    the share that did); the maxima are over the others."""
    if not postprocess:
        width = expected[0].shape[-1]
        mine = np.concatenate([_sigmoid(expected[0]), expected[1]], -1)
        theirs = np.concatenate([_sigmoid(got[0]), got[1]], -1)
        parts = {"probabilities": slice(0, width), "boxes": slice(width, None)}
        penalties = [0.0] * len(mine)
    else:
        scale = float(max(size))
        mine = np.concatenate([expected[0][..., None], expected[2] / scale], -1)
        theirs = np.concatenate([got[0][..., None], got[2] / scale], -1)
        parts = {"scores": slice(0, 1), "boxes": slice(1, None)}
        # a detection pairs only with one of the same class
        penalties = [
            np.where(a[:, None] == b[None], 0.0, 1e3)
            for a, b in zip(expected[1], got[1], strict=True)
        ]
    found = dict.fromkeys(parts, 0.0)
    swapped = 0.0
    for a, b, penalty in zip(mine, theirs, penalties, strict=True):
        a, b = _matched(a, b, penalty)
        error = np.abs(a - b).max(-1)
        beyond = error > tolerance
        swapped = max(swapped, float(beyond.mean()))
        if beyond.mean() <= SWAPS:
            a, b = a[~beyond], b[~beyond]
        for name, columns in parts.items():
            if len(a):
                found[name] = max(found[name], float(np.abs(a[:, columns] - b[:, columns]).max()))
    if postprocess:
        found["labels_differ"] = max(
            float(np.mean(np.sort(la) != np.sort(lb)))
            for la, lb in zip(expected[1], got[1], strict=True)
        )
    return {**found, "swapped": swapped}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _matched(a: np.ndarray, b: np.ndarray, penalty: np.ndarray | float = 0.0):
    """Rows of a [N,D] and b [N,D] paired by the assignment of least max |difference|."""
    from scipy.optimize import linear_sum_assignment

    cost = np.abs(a[:, None] - b[None]).max(-1) + penalty
    rows, cols = linear_sum_assignment(cost)
    return a[rows], b[cols]
