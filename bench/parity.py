"""Imported Hugging Face checkpoints against transformers itself: max |difference| of class
probabilities and boxes, per architecture, on a padded batch of two images.

    python -m bench.parity

The transformers models are built from their configs (ResNet-18 backbone, d_model 64, 2+2
layers, 12 queries, 5 classes) with random, perturbed weights; nothing is downloaded. Each is
saved as a Hub folder, imported with `detrdistill import`'s code and run on the same pixels.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import write_results
from detr_models.pretrained.hf_folder import import_hf
from tests.hf_reference import SMALL, as_pipeline_pixels, hf_model, padded_batch, save_folder

KINDS = {
    "detr": "DETR (softmax head)",
    "conditional_detr": "Conditional DETR",
    "dab_detr": "DAB-DETR",
    "deformable": "Deformable DETR",
    "deformable_refine": "Deformable DETR + box refine",
    "deformable_two_stage": "Deformable DETR two-stage (+ box refine)",
    "rtdetr_v2": "RT-DETRv2 (ResNet-18-vd)",
}


def measure(kind: str) -> tuple[float, float]:
    reference = hf_model(kind)
    with tempfile.TemporaryDirectory() as folder:
        model = import_hf(save_folder(reference, Path(folder) / "hf")).model
    pixels, mask = padded_batch()
    with torch.no_grad():
        expected = reference(pixel_values=pixels, pixel_mask=mask)
        ours = model(as_pipeline_pixels(kind, pixels), mask == 0)
    probs = expected.logits.softmax(-1)[..., :-1] if kind == "detr" else expected.logits.sigmoid()
    return (
        (ours.logits[-1].sigmoid() - probs).abs().max().item(),
        (ours.boxes[-1] - expected.pred_boxes).abs().max().item(),
    )


def main() -> None:
    import transformers

    rows = []
    for kind, label in KINDS.items():
        prob, box = measure(kind)
        rows.append((label, f"{prob:.0e}" if prob else "0", f"{box:.0e}" if box else "0"))
    write_results(
        "parity",
        "Imported checkpoints vs Hugging Face transformers",
        {"transformers": transformers.__version__, **SMALL},
        {"": (("architecture", "probabilities", "boxes"), rows)},
        notes=["max |difference|, CPU float32; tests/test_pretrained.py asserts <= 1e-4"],
    )


if __name__ == "__main__":
    main()
