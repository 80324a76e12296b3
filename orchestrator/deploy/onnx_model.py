"""An exported `.onnx` detector run by onnxruntime where the product runs PyTorch models
(`detrdistill eval` / `predict`): it answers like a detector (`.logits` / `.boxes` of one
stage) so the same post-processing and COCO evaluation score the deployed file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_convert

from detr_models.backbone import IMAGENET_MEAN, IMAGENET_STD
from orchestrator.deploy.onnx_export import METADATA_KEY
from orchestrator.errors import UserInputError

ABSENT_LOGIT = -1e4  # the other classes of a post-processed detection


@dataclass
class StageAnswer:
    """One stage of predictions, shaped as DetrOutput's: logits [1,B,Q,C], boxes [1,B,Q,4]."""

    logits: torch.Tensor
    boxes: torch.Tensor


def is_onnx_source(source: str) -> bool:
    return source.lower().endswith(".onnx")


class OnnxDetector(nn.Module):
    """`forward(images, pixel_mask)` with the pipeline's ImageNet-normalised, padded batch:
    each image's valid region runs through onnxruntime (the graph has no padding mask), and the
    answers come back normalised to the padded canvas. A post-processed graph's top-k
    detections become one query each (its class's logit, the others far below)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserInputError(
                f"{path}: running an .onnx model needs onnxruntime; `pip install 'detrdistill[deploy]'`"
            ) from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            raise UserInputError(
                f"{path}: not a readable ONNX model ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); export it with `detrdistill export`"
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            raise UserInputError(
                f"{path}: an ONNX file without detrdistill metadata (class names, sizes); "
                "export it with `detrdistill export`"
            )
        self.extra: dict[str, Any] = json.loads(meta)
        self.path = Path(path)
        self.postprocess = bool(self.extra.get("postprocess"))
        shape = self.session.get_inputs()[0].shape  # [B,3,H,W], ints where static
        self.static_size = tuple(shape[2:]) if all(isinstance(d, int) for d in shape[2:]) else None
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        self.num_classes = len(self.extra.get("class_names", [])) or None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), False)

    def forward(self, images: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> StageAnswer:
        height, width = images.shape[-2:]
        logits, boxes = [], []
        for i, image in enumerate(images):
            valid = ~pixel_mask[i] if pixel_mask is not None else None
            h = int(valid.any(1).sum()) if valid is not None else height
            w = int(valid.any(0).sum()) if valid is not None else width
            pixels = (image[:, :h, :w].cpu() * self.std + self.mean)[None]
            z, b = self._run(pixels)
            scale = torch.tensor([w / width, h / height, w / width, h / height])
            logits.append(z)
            boxes.append(b * scale)
        return StageAnswer(torch.stack(logits)[None], torch.stack(boxes)[None])

    def _run(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image [1,3,h,w] in [0, 1] -> (logits [Q,C], boxes [Q,4] normalised cxcywh)."""
        size = tuple(pixels.shape[-2:])
        if self.static_size is not None and size != self.static_size:
            raise UserInputError(
                f"{self.path}: exported for {self.static_size[0]}x{self.static_size[1]} inputs, "
                f"got a {size[0]}x{size[1]} image; evaluate at that size (--size, square models) "
                "or export with --dynamic"
            )
        if self.static_batch not in (None, 1):
            raise UserInputError(
                f"{self.path}: exported for batches of {self.static_batch}; export with --batch 1 "
                "or --dynamic-batch to run it image by image"
            )
        outputs = self.session.run(None, {"images": pixels.numpy().astype(np.float32)})
        if not self.postprocess:
            return torch.from_numpy(outputs[0][0]), torch.from_numpy(outputs[1][0])
        scores, labels, xyxy = (torch.from_numpy(o[0]) for o in outputs)
        classes = self.num_classes or int(labels.max()) + 1
        logits = torch.full((len(scores), classes), ABSENT_LOGIT)
        logits[torch.arange(len(scores)), labels] = torch.logit(scores.clamp(1e-6, 1 - 1e-6))
        canvas = torch.tensor([size[1], size[0], size[1], size[0]], dtype=xyxy.dtype)
        return logits, box_convert(xyxy / canvas, "xyxy", "cxcywh")


def load_onnx(source: str) -> tuple[OnnxDetector, dict[str, Any]]:
    """(the detector, a payload like a model file's: {"extra": ...}) of an `.onnx` file."""
    if not Path(source).is_file():
        raise UserInputError(f"{source}: no such ONNX file")
    model = OnnxDetector(source)
    return model, {"extra": model.extra, "config": None}
