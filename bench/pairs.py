"""The teacher/student pairs, batches and training objectives the speed benchmarks time.

Two configs per architecture:
- `tiny`: the quickstart sizes (student width 32, 2 decoder stages; teacher width 64, 3 stages)
  on 128 px synthetic images, 3 classes;
- `resnet50`: the papers' R-101 -> R-50 pairs, read from the COCO recipes in `experiments/`
  (300 queries, 6 + 6 layers, 80 classes), on synthetic images of `--r50-size` pixels; for
  RT-DETRv2 the RT-DETRv2-R50 -> R-18 pair of its DETRDistill recipe.
Weights are random: step time does not depend on them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import ROOT
from detr_models.build import build_model
from detr_models.config import ModelConfig, model_config_from_dict
from detr_models.criterion import SetCriterion, total
from detr_models.matcher import HungarianMatcher
from distill.config import DETRDistillConfig, ODDETRConfig
from distill.detrdistill import DETRDistill
from distill.objective import DetectionObjective, Progress
from distill.od_detr import ODDETR
from orchestrator.data.dataset import CocoDetection
from orchestrator.data.loader import collate_detection
from orchestrator.data.synth import ensure_shapes, split_paths
from orchestrator.data.transforms import eval_transforms
from orchestrator.spec.loader import load_spec

ARCHS = ("deformable_detr", "conditional_detr", "dab_detr", "rtdetr_v2")
EXPERIMENTS = ROOT / "experiments"
# the R-50 student of each architecture, from its COCO recipe (the teacher swaps in R-101)
R50_RECIPES = {
    "deformable_detr": "coco_detrdistill_deformable_r101_r50.yaml",
    "conditional_detr": "coco_detrdistill_conditional_r101_r50.yaml",
    "dab_detr": "coco_dab_detr_r50.yaml",
    # RT-DETRv2: its own pair, the R-50 teacher (Hub) -> the R-18 student
    "rtdetr_v2": "coco_detrdistill_rtdetr_v2_r50_r18.yaml",
}
TINY_STUDENT = {
    "backbone": "tiny",
    "tiny_width": 8,
    "hidden_dim": 32,
    "num_heads": 4,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "ffn_dim": 64,
    "num_queries": 30,
    "dropout": 0.0,
}
TINY_LEVELS = {
    "deformable_detr": {"levels": ["C3", "C4", "C5"], "num_feature_levels": 4, "box_refine": True},
    "conditional_detr": {"levels": ["C4"]},
    "dab_detr": {"levels": ["C4"]},
    "rtdetr_v2": {"levels": ["C3", "C4", "C5"], "encoder_ffn_dim": 64, "num_denoising": 30},
}
CONFIGS = ("tiny", "resnet50")


def pair(arch: str, config: str) -> tuple[ModelConfig, ModelConfig]:
    """(student, teacher) model configs of `arch` in the `tiny` or `resnet50` config."""
    if config == "tiny":
        student = model_config_from_dict(
            {"architecture": arch, "num_classes": 3, **TINY_STUDENT, **TINY_LEVELS[arch]}
        )
        teacher = student.model_copy(
            update={"tiny_width": 16, "hidden_dim": 64, "decoder_layers": 3, "ffn_dim": 128}
        )
        return student, teacher
    if config != "resnet50":
        raise ValueError(f"unknown config {config!r}; choose from {CONFIGS}")
    spec = load_spec(EXPERIMENTS / R50_RECIPES[arch])
    student = spec.student.with_classes(80).model_copy(update={"backbone_weights": None})
    if arch == "rtdetr_v2":
        return student, spec.teacher.model
    teacher = student.model_copy(update={"backbone": "resnet101"})
    return student, teacher


def image_size(config: str, r50_size: int) -> int:
    return 128 if config == "tiny" else r50_size


def synthetic_batch(batch: int, size: int, device: torch.device | str = "cpu"):
    """`batch` synthetic shapes images (1-4 objects each) resized to `size`, collated."""
    root = ensure_shapes(
        Path(tempfile.gettempdir()) / "detrdistill-bench-shapes", num_train=64, num_val=1
    )
    dataset = CocoDetection(
        *split_paths(root, "train"), transforms=eval_transforms(size, size * 5 // 3)
    )
    return collate_detection([dataset[i % len(dataset)] for i in range(batch)]).to(device)


def detrdistill_config() -> DETRDistillConfig:
    """The paper's DETRDistill settings (A 1/5/2, B 1, C 2/5/2), as the R-50 recipe has them."""
    return load_spec(EXPERIMENTS / "coco_detrdistill_deformable_r101_r50.yaml").distill


def od_detr_config() -> ODDETRConfig:
    return load_spec(EXPERIMENTS / "coco_oddetr_deformable_r50_12ep.yaml").distill


def only(config: DETRDistillConfig, keep: str) -> DETRDistillConfig:
    """A DETRDistill config with every term but `keep` disabled."""
    changes = {
        name: getattr(config, name).model_copy(update={"enabled": name == keep})
        for name in ("logits", "feature", "query_prior")
    }
    return config.model_copy(update=changes)


class Setup:
    """A student, its teacher and every objective of the benchmark, on one device."""

    def __init__(
        self, arch: str, config: str, device: torch.device | str = "cpu", queries: int | None = None
    ) -> None:
        torch.manual_seed(0)
        self.arch, self.config = arch, config
        student, teacher = pair(arch, config)
        if queries is not None:
            student = student.model_copy(update={"num_queries": queries})
            teacher = teacher.model_copy(update={"num_queries": queries})
        self.student_config, self.teacher_config = student, teacher
        num_classes = self.student_config.num_classes
        self.student = build_model(self.student_config).to(device)
        self._teacher = None  # built on first use, so a student-alone process never holds it
        loss = {"classification": "varifocal", "weight_cls": 1.0} if arch == "rtdetr_v2" else {}
        self.criterion = SetCriterion(num_classes, HungarianMatcher(), **loss)
        self.device = device

    @property
    def teacher(self) -> torch.nn.Module:
        if self._teacher is None:
            self._teacher = build_model(self.teacher_config).to(self.device)
        return self._teacher

    def objective(self, name: str):
        """`student`, `logits`, `feature`, `query_prior`, `detrdistill` or `od_detr`."""
        if name == "student":
            return DetectionObjective(self.criterion)
        if name == "od_detr":
            anchors = self.student_config.query_kind == "anchor"
            return ODDETR(self.student, self.criterion, od_detr_config(), anchors).to(self.device)
        config = detrdistill_config()
        if name != "detrdistill":
            config = only(config, name)
        return DETRDistill(
            self.teacher, self.teacher_config, self.student_config, self.criterion, config
        ).to(self.device)

    def step_fn(self, objective, batch):
        """One training step as the engine runs it: forward, losses, backward, AdamW, after_step."""
        params = list(self.student.parameters())
        params += [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        progress = Progress(0, 0, 1, 1)

        def step() -> None:
            self.student.train()  # another case may have left it in eval mode
            losses, _ = objective(self.student, batch, progress)
            optimizer.zero_grad(set_to_none=True)
            total(losses).backward()
            optimizer.step()
            objective.after_step()

        return step

    def teacher_forward_fn(self, model, batch):
        def forward() -> None:
            with torch.no_grad():
                model.eval()(batch.images, batch.pixel_mask)

        return forward
