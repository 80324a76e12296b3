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
TIE = 1e-5  # scores this close may come out in either order


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
    difference exceeds `options.tolerance`. Returns the report."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch, _, height, width = example.shape
    rows = []
    for size in check_sizes(height, width, options.dynamic):
        images = check_images(options.check_images, batch, *size)
        with torch.no_grad():
            expected = [t.numpy() for t in graph(images)]
        got = session.run(None, {"images": images.numpy()})
        rows.append({"size": list(size), **_differences(expected, got, graph.postprocess, size)})
    worst = {key: max(row[key] for row in rows) for key in rows[0] if key != "size"}
    report = {"checked": rows, "max_diff": worst, "tolerance": options.tolerance}
    checked = {k: v for k, v in worst.items() if k != "labels_differ"}  # reported only
    if any(value > options.tolerance for value in checked.values()):
        raise UserInputError(
            f"onnxruntime disagrees with PyTorch on the exported graph: max differences {checked} "
            f"exceed the tolerance {options.tolerance} (sizes {[r['size'] for r in rows]}); "
            "nothing was written. Try another --opset, or --tolerance if the differences are "
            "acceptable for your deployment"
        )
    return report


def _differences(expected, got, postprocess: bool, size: tuple[int, int]) -> dict[str, float]:
    if not postprocess:
        logits, boxes = expected
        prob = 1 / (1 + np.exp(-logits))
        got_prob = 1 / (1 + np.exp(-got[0]))
        return {
            "probabilities": float(np.abs(prob - got_prob).max()),
            "boxes": float(np.abs(boxes - got[1]).max()),
        }
    scores, labels, boxes = expected
    # detections whose score (nearly) ties a neighbour's may swap places between runtimes:
    # boxes compare where the rank is unambiguous and the labels agree
    gap = np.abs(np.diff(scores, axis=-1))
    ambiguous = np.zeros(scores.shape, dtype=bool)
    ambiguous[..., 1:] |= gap < TIE
    ambiguous[..., :-1] |= gap < TIE
    same = (labels == got[1]) & ~ambiguous
    box_diff = np.abs(boxes - got[2]).max(-1)[same] / max(size)
    return {
        "scores": float(np.abs(scores - got[0]).max()),
        "boxes": float(box_diff.max()) if box_diff.size else 0.0,
        "labels_differ": float(1 - (labels == got[1]).mean()),
    }
