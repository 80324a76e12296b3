"""One training run of an accuracy benchmark, in a pool process, kept on disk: a run whose
folder already holds the result of the same spec, seed and overrides is not trained again, so
a long suite that stops part way goes on where it stopped.

Each run leaves in its folder `result.json` (final metrics, instability per epoch, minutes) and
`detections.json` (the final model's COCO detections on the validation set, for the paired
bootstrap over validation images)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import ROOT

RESULT = "result.json"
DETECTIONS = "detections.json"


def one_thread() -> None:
    """Pool initializer: independent runs parallelise better than threads on small models."""
    import torch

    torch.set_num_threads(1)


def _key(path: str, seed: int, overrides: list[str]) -> dict:
    return {"spec": path, "seed": seed, "overrides": list(overrides)}


def cached(folder: str | Path, path: str, seed: int, overrides: list[str]) -> dict | None:
    """The stored result of this exact run, or None."""
    file = Path(folder) / RESULT
    if not file.exists():
        return None
    result = json.loads(file.read_text())
    return result if result.get("key") == _key(path, seed, overrides) else None


def train(path: str, seed: int, overrides: list[str], folder: str) -> dict:
    """Train one spec in this process (or reuse its stored result); returns final metrics,
    instability curves, minutes, the model file and the detections file."""
    found = cached(folder, path, seed, overrides)
    if found is not None:
        return found
    from bench.local_training import train_local
    from orchestrator.data.build import data_paths
    from orchestrator.launch.inference import evaluate_model
    from orchestrator.spec.loader import load_spec
    from orchestrator.spec.paths import resolve_paths
    from orchestrator.training.checkpoints import MODEL_FILE

    out = Path(folder)
    (out / RESULT).unlink(missing_ok=True)
    spec = resolve_paths(load_spec(ROOT / path, [f"seed={seed}", *overrides]), ROOT)
    start = time.perf_counter()
    reporter = train_local(spec, out)
    minutes = (time.perf_counter() - start) / 60
    model_file = reporter.last_checkpoint / MODEL_FILE
    images, annotations = data_paths(spec.data)["val"]
    evaluate_model(
        str(model_file),
        images,
        annotations,
        size=spec.data.eval_size,
        batch_size=spec.data.batch_size,
        results=out / DETECTIONS,
        quiet=True,
    )
    last = reporter.history[-1]
    result = {
        "key": _key(path, seed, overrides),
        "seed": seed,
        "minutes": minutes,
        "final": {k: v for k, v in last.items() if k.startswith(("val/", "val_ema/"))},
        "instability": reporter.metric("stability/instability"),
        "flip_rate": reporter.metric("stability/gt_flip_rate"),
        "ema_instability": reporter.metric("stability_ema/instability"),
        "model_file": str(model_file),
        "detections": str(out / DETECTIONS),
        "annotations": str(annotations),
    }
    (out / RESULT).write_text(json.dumps(result, indent=1) + "\n")
    return result
