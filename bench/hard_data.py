"""The harder synthetic benchmark's data: 8 classes, clutter, occlusion, textures and small
objects, with 512 validation images (the quickstart's 32 cannot show a one-point AP effect)."""

from __future__ import annotations

from bench.common import ROOT

HARD_DATA = [
    "data.source.classes=8",
    "data.source.max_objects=6",
    "data.source.distractors=4",
    "data.source.occlusion=0.4",
    "data.source.textured=true",
    "data.source.small_objects=true",
    "data.source.train_images=512",
    "data.source.val_images=512",
    f"data.source.cache_dir={ROOT / 'data' / 'cache'}",
]


def recipe(epochs: int) -> list[str]:
    """Overrides for `epochs` epochs, evaluated once at the end, lr step 1/6 before the end."""
    return [
        "train.log_every=100000",
        f"train.epochs={epochs}",
        f"train.eval_interval={epochs}",
        f"optim.step_epochs=[{max(1, epochs - epochs // 6)}]",
    ]
