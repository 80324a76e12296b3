"""Any Hugging Face DETR-family detector as a frozen teacher: the model runs in eval mode under
no_grad on the student's own augmented batch (re-normalised as its image processor would) and
returns a DetrOutput in this product's conventions, restricted to the dataset's classes.

transformers is imported only here, and only when such a teacher is loaded (`detrdistill[hf]`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detr_models.backbone import downsample_mask
from detr_models.output import DetrOutput
from distill.config import DETRDistillConfig
from distill.hf_families import FEATURES, QUERIES, Captured, Family, family_of, supported_classes

INSTALL = "pip install 'detrdistill[hf]'"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ABSENT_LOGIT = -50.0  # a dataset class the teacher has no counterpart for: probability ~0
PROBE_SIZE = 320  # the square image the strides and stage count are read from


class TeacherUnavailable(ValueError):
    """A teacher that cannot be loaded or read; the message says why and what to do."""


@dataclass(frozen=True)
class TeacherProfile:
    """What the distillation terms need to know of a teacher (a native teacher's ModelConfig
    answers the same questions)."""

    class_name: str
    decoder_layers: int
    feature_strides: list[int]
    hidden_dim: int
    query_kind: str
    provides: frozenset[str]
    class_names: list[str]


def term_needs(config: DETRDistillConfig) -> dict[str, str]:
    """The enabled DETRDistill terms that need more than a teacher's final predictions, with
    what each needs."""
    needs = {}
    if config.feature.enabled:
        needs["feature"] = FEATURES
    if config.query_prior.enabled:
        needs["query_prior"] = QUERIES
    if config.contrastive.enabled:
        needs["contrastive"] = QUERIES
    return needs


def load_hf_model(folder: Path) -> tuple[nn.Module, Family]:
    """The HF detector of a local model folder (safetensors only: nothing is unpickled), frozen."""
    name = hf_class_name(folder)
    family = family_of(name)
    if family is None:
        raise TeacherUnavailable(
            f"{folder}: {name} is not a supported teacher class; supported: "
            f"{', '.join(supported_classes())}"
        )
    try:
        import transformers
    except ImportError:
        raise TeacherUnavailable(
            f"{folder}: a Hugging Face teacher ({name}) needs transformers; install it with "
            f"`{INSTALL}`"
        ) from None
    model_class = getattr(transformers, name, None)
    if model_class is None:
        raise TeacherUnavailable(
            f"{folder}: transformers {transformers.__version__} has no {name}; upgrade it "
            f"(`{INSTALL} --upgrade`)"
        )
    if not list(folder.glob("*.safetensors")):
        raise TeacherUnavailable(
            f"{folder}: no *.safetensors weights (pickled .bin files are never loaded); save the "
            "model with save_pretrained(..., safe_serialization=True)"
        )
    try:
        model = model_class.from_pretrained(folder, use_safetensors=True)
    except Exception as err:  # transformers raises many types for a bad folder
        raise TeacherUnavailable(
            f"{folder}: transformers cannot load it as {name} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:300]})"
        ) from None
    if getattr(model.config, "anchor_image_size", None) is not None:
        model.config.anchor_image_size = None  # anchors for each batch's size, not one fixed size
    return model.eval().requires_grad_(False), family


def hf_class_name(folder: Path) -> str:
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
        return str(config["architectures"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise TeacherUnavailable(
            f"{config_file}: not a Hugging Face model config with `architectures` ({err}); give "
            "a folder written by save_pretrained"
        ) from None


def input_normalisation(folder: Path, family: Family) -> tuple[tuple, tuple] | None:
    """(mean, std) the teacher's image processor normalises [0, 1] pixels with, or None when it
    does not (RT-DETR, D-FINE): from preprocessor_config.json, else the family's default."""
    file = folder / "preprocessor_config.json"
    if file.is_file():
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise TeacherUnavailable(f"{file}: not readable JSON ({err})") from None
        if not config.get("do_normalize", family.normalise):
            return None
        return tuple(config.get("image_mean", IMAGENET_MEAN)), tuple(
            config.get("image_std", IMAGENET_STD)
        )
    return (IMAGENET_MEAN, IMAGENET_STD) if family.normalise else None


class HfTeacher(nn.Module):
    """A frozen HF detector that answers like a native one: forward(images, pixel_mask) takes
    the product's ImageNet-normalised, padded batch (pixel_mask True on padding) and returns a
    DetrOutput whose logits cover the dataset's classes (see `map_classes`)."""

    def __init__(
        self,
        model: nn.Module,
        family: Family,
        normalisation: tuple[tuple, tuple] | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.family = family
        self.precision = precision
        self.normalisation = normalisation
        self.register_buffer("in_mean", torch.tensor(IMAGENET_MEAN)[:, None, None], False)
        self.register_buffer("in_std", torch.tensor(IMAGENET_STD)[:, None, None], False)
        mean, std = normalisation or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.register_buffer("out_mean", torch.tensor(mean)[:, None, None], False)
        self.register_buffer("out_std", torch.tensor(std)[:, None, None], False)
        self.class_index: list[int | None] | None = None
        self.captured: Captured | None = None
        self._hook()
        self.profile = self._probe()

    # ------------------------------------------------------------------ set-up
    def _hook(self) -> None:
        for level, module in enumerate(self.family.projections(self.model)):
            module.register_forward_hook(self._map_hook(level))
        for module in self.family.layers(self.model) if self.family.layers else []:
            module.register_forward_hook(self._layer_hook)
        self.model.model.decoder.register_forward_pre_hook(self._decoder_hook, with_kwargs=True)

    def _map_hook(self, level: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.captured is None:
                return
            maps = output if isinstance(output, list | tuple) else [output]
            self.captured.maps += [((level, i), m) for i, m in enumerate(maps)]

        return hook

    def _layer_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.captured is not None:
            self.captured.layers.append(output[0] if isinstance(output, tuple) else output)

    def _decoder_hook(self, module: nn.Module, args: Any, kwargs: dict) -> None:
        if self.captured is not None:
            self.captured.decoder_inputs.update(kwargs)

    def _probe(self) -> TeacherProfile:
        """Stage count, class count and feature strides, read from one forward."""
        unit = self.family.unit(self.model.config) if self.family.unit else 32
        size = math.ceil(PROBE_SIZE / unit) * unit
        with torch.no_grad():
            out = self.forward(
                torch.zeros(1, 3, size, size), torch.zeros(1, size, size, dtype=torch.bool)
            )
        strides = [2 ** round(math.log2(size / f.shape[-2])) for f in out.features]
        config = self.model.config
        return TeacherProfile(
            class_name=type(self.model).__name__,
            decoder_layers=out.num_stages,
            feature_strides=strides,
            hidden_dim=out.hidden.shape[-1],
            query_kind=self.family.query_kind(config),
            provides=self.family.provides,
            class_names=[config.id2label[i] for i in sorted(config.id2label)][
                : out.logits.shape[-1]
            ],
        )

    def map_classes(self, index: list[int | None] | None) -> None:
        """Dataset class k reads the teacher's class index[k]; None: no counterpart (probability
        ~0, and no logits distillation: see `covered`). None for index: the teacher's own."""
        self.class_index = index
        # built once (buffers follow .to(device)): no host-to-device copies per forward
        picks = [t if t is not None else 0 for t in index or []]
        self.register_buffer("class_picks", torch.tensor(picks, dtype=torch.long), False)
        absent = [t is None for t in index or []]
        self.register_buffer("class_absent", torch.tensor(absent, dtype=torch.bool), False)

    @property
    def covered(self) -> list[int] | None:
        """The dataset classes with a teacher counterpart, None when all are."""
        if self.class_index is None or None not in self.class_index:
            return None
        return [k for k, t in enumerate(self.class_index) if t is not None]

    def train(self, mode: bool = True) -> HfTeacher:
        super().train(False)  # always frozen
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, pixel_mask: torch.Tensor) -> DetrOutput:
        height, width = images.shape[-2:]
        pixels = ((images * self.in_std + self.in_mean) - self.out_mean) / self.out_std
        pixels, padded_mask = self._pad(pixels, pixel_mask)
        captured = self.captured = Captured()
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        try:
            with (
                torch.no_grad(),
                torch.autocast(
                    "cuda", dtype=half or torch.float32, enabled=bool(half) and images.is_cuda
                ),
            ):
                out = self.family.run(self.model, pixels, (~padded_mask).long())
                stages = self.family.read(self.model, out, captured)
        finally:
            self.captured = None
        features = [m.float() for _, m in sorted(captured.maps, key=lambda pair: pair[0])]
        # back to the batch's own canvas: boxes rescaled, maps cropped to its extent
        scale = pixels.new_tensor([pixels.shape[-1] / width, pixels.shape[-2] / height] * 2)
        position = stages.init_position.float()
        if position.shape[-1] == 4:
            position = position * scale
        if pixels.shape[-2:] != (height, width):
            features = [
                _crop(f, height / pixels.shape[-2], width / pixels.shape[-1]) for f in features
            ]
        return DetrOutput(
            logits=self._dataset_logits(stages.logits.float()),
            boxes=stages.boxes.float() * scale,
            hidden=stages.hidden.float(),
            references=None,
            init_content=stages.init_content.float(),
            init_position=position,
            features=features,
            feature_masks=[downsample_mask(pixel_mask, f.shape[-2:]) for f in features],
        )

    def _pad(
        self, pixels: torch.Tensor, pixel_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-pad right and bottom to the sides the model reads (multiples of its unit, square
        where it needs it); the padding is marked in the mask."""
        family = self.family
        unit = family.unit(self.model.config) if family.unit else 1
        height, width = pixels.shape[-2:]
        new_h, new_w = math.ceil(height / unit) * unit, math.ceil(width / unit) * unit
        if family.square:
            new_h = new_w = max(new_h, new_w)
        if (new_h, new_w) == (height, width):
            return pixels, pixel_mask
        pad = (0, new_w - width, 0, new_h - height)
        return F.pad(pixels, pad), F.pad(pixel_mask, pad, value=True)

    def _dataset_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.class_index is None:
            return logits
        mapped = logits.index_select(-1, self.class_picks)
        return mapped.masked_fill(self.class_absent, ABSENT_LOGIT)


def _crop(feature: torch.Tensor, keep_h: float, keep_w: float) -> torch.Tensor:
    """The part of a map [B,D,H,W] that covers the leading fractions of the padded canvas."""
    height = math.ceil(keep_h * feature.shape[-2])
    width = math.ceil(keep_w * feature.shape[-1])
    return feature[..., :height, :width]
