"""Evaluate or run a trained model from any source (`models:/`, `runs:/`, a local file, or an
exported `.onnx` file run by onnxruntime)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_convert

from detr_models.postprocess import PostProcess
from orchestrator.data.dataset import CocoDetection
from orchestrator.data.loader import build_loader
from orchestrator.data.transforms import eval_transforms
from orchestrator.deploy.onnx_model import is_onnx_source, load_onnx
from orchestrator.evaluation.coco import CocoEvaluator, format_metrics_table
from orchestrator.evaluation.drawing import save_detections_png
from orchestrator.training.engine import evaluate
from orchestrator.training.model_source import load_model

logger = logging.getLogger("detrdistill")


def load_for_inference(source: str, tracking_uri: str | None) -> tuple[torch.nn.Module, dict]:
    """(model, payload) of any model source; an `.onnx` file runs in onnxruntime."""
    if is_onnx_source(source):
        return load_onnx(source)
    return load_model(source, tracking_uri=tracking_uri)


def evaluate_model(
    source: str,
    images: Path,
    annotations: Path,
    tracking_uri: str | None = None,
    size: int | None = None,
    batch_size: int = 4,
    results: Path | None = None,
    quiet: bool = False,
) -> dict[str, float]:
    """COCO metrics of the model at `source` on a dataset; prints the table."""
    model, payload = load_for_inference(source, tracking_uri)
    extra = payload["extra"]
    dataset = CocoDetection(
        images,
        annotations,
        transforms=eval_transforms(
            size or extra.get("eval_size", 800),
            extra.get("max_size", 1333),
            square=extra.get("eval_square", False),
        ),
    )
    if "label_to_category" in extra and extra["label_to_category"] != dataset.label_to_category:
        logger.warning(
            f"the model was trained on category ids {extra['label_to_category']}, "
            f"the dataset has {dataset.label_to_category}"
        )
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_category)
    loader = build_loader(dataset, batch_size, train=False)
    metrics, _ = evaluate(model, loader, evaluator, torch.device("cpu"))
    if not quiet:
        logger.info(format_metrics_table(metrics, title=f"{source} on {annotations}"))
    if results is not None:
        evaluator.write_results(results)
    return metrics


@torch.no_grad()
def predict_images(
    source: str,
    image_paths: list[Path],
    out_dir: Path,
    tracking_uri: str | None = None,
    size: int | None = None,
    threshold: float = 0.3,
    json_path: Path | None = None,
    max_size: int | None = None,
    top_k: int = 100,
) -> list[Path]:
    """Draw detections on each image into `out_dir` and write `json_path` (default
    `out_dir/predictions.json`): per image its file name, size and top-k detections in
    original-image pixels, `{"bbox": [x, y, w, h], "score", "category_id", "category"}`."""
    model, payload = load_for_inference(source, tracking_uri)
    model.eval()
    extra = payload["extra"]
    names = extra.get("class_names")
    ids = extra.get("label_to_category") or list(range(model.num_classes))
    transform = eval_transforms(
        size or extra.get("eval_size", 800),
        max_size or extra.get("max_size", 1333),
        square=extra.get("eval_square", False),
    )
    post = PostProcess(top_k=top_k)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, records = [], []
    for path in image_paths:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        pixels = tv_tensors.Image(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
        empty = tv_tensors.BoundingBoxes(
            torch.zeros(0, 4), format="XYXY", canvas_size=pixels.shape[-2:]
        )
        image, _ = transform(pixels, {"boxes": empty, "labels": torch.zeros(0, dtype=torch.long)})
        out = model(image[None])
        (pred,) = post(out.logits[-1], out.boxes[-1], torch.tensor([[rgb.height, rgb.width]]))
        target = out_dir / f"{path.stem}.png"
        save_detections_png(
            target,
            pixels.as_subclass(torch.Tensor),
            pred["boxes"],
            pred["labels"],
            pred["scores"],
            class_names=names,
            score_threshold=threshold,
        )
        written.append(target)
        xywh = box_convert(pred["boxes"], "xyxy", "xywh")
        detections = [
            {
                "bbox": [round(v, 2) for v in box],
                "score": round(score, 5),
                "category_id": ids[label],
                "category": names[label] if names else str(ids[label]),
            }
            for box, score, label in zip(
                xywh.tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True
            )
        ]
        records.append(
            {
                "file_name": path.name,
                "width": rgb.width,
                "height": rgb.height,
                "detections": detections,
            }
        )
    json_path = json_path or out_dir / "predictions.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_name(f".{json_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(records, indent=1))
    os.replace(tmp, json_path)
    return written
