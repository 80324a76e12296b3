"""What a Hugging Face teacher costs: the adapter against the HF model's bare forward, the same
weights run natively, and a distillation step from each.

    python -m bench.hf_teacher [--size 320] [--batch 2] [--repeats 10] [--device cpu|cuda]

Teachers (random weights, R-18-sized, 256 wide, 300 queries, 3 decoder layers): HF
RT-DETRv2-R18 and the same weights imported into our native RT-DETRv2 (`import_hf`); HF D-FINE
with the same ResNet-18-vd backbone. The student is the quickstart RT-DETRv2 (32 wide). Cases
take turns (bench.common.interleaved_times). Adapter overhead = adapter forward / bare HF
forward - 1 (target <= 5%); a step's ratio divides it by (student step + that teacher's forward).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.common import interleaved_times, target_row, verdict, write_results
from bench.pairs import synthetic_batch
from detr_models.build import build_model
from detr_models.config import LossConfig, MatcherConfig, RtDetrConfig
from detr_models.criterion import build_criterion, total
from detr_models.pretrained.hf_folder import import_hf
from distill.config import DETRDistillConfig
from distill.hf_teacher import HfTeacher, input_normalisation, load_hf_model
from distill.methods import Student, Teacher, build_objective
from distill.objective import DetectionObjective, Progress

TARGET = 0.05
CLASSES = {0: "circle", 1: "square", 2: "triangle"}
STUDENT = RtDetrConfig(
    num_classes=3,
    backbone="tiny",
    tiny_width=8,
    levels=["C3", "C4", "C5"],
    hidden_dim=32,
    num_heads=4,
    encoder_layers=1,
    encoder_ffn_dim=64,
    decoder_layers=2,
    ffn_dim=64,
    num_queries=30,
    num_denoising=30,
    dropout=0.0,
)


def hf_teachers(folder: Path) -> dict[str, Path]:
    """HF RT-DETRv2-R18 and D-FINE (R-18-vd backbone) saved as model folders."""
    import transformers as hf

    def backbone():
        return hf.RTDetrResNetConfig(
            layer_type="basic",
            depths=[2, 2, 2, 2],
            hidden_sizes=[64, 128, 256, 512],
            embedding_size=64,
            out_features=["stage2", "stage3", "stage4"],
        )

    shared = {
        "encoder_in_channels": [128, 256, 512],
        "hidden_expansion": 0.5,
        "decoder_layers": 3,
        "id2label": CLASSES,
    }
    torch.manual_seed(0)
    models = {
        "rtdetr_v2": hf.RTDetrV2ForObjectDetection(
            hf.RTDetrV2Config(backbone_config=backbone(), **shared)
        ),
        "d_fine": hf.DFineForObjectDetection(hf.DFineConfig(backbone_config=backbone(), **shared)),
    }
    folders = {}
    for name, model in models.items():
        folders[name] = folder / name
        model.eval().save_pretrained(folders[name])
    return folders


def adapter(folder: Path, device: str) -> HfTeacher:
    model, family = load_hf_model(folder)
    return HfTeacher(model, family, input_normalisation(folder, family)).to(device)


def step_fn(student, objective, batch):
    params = list(student.parameters()) + [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    progress = Progress(0, 0, 1, 1)

    def step() -> None:
        student.train()
        losses, _ = objective(student, batch, progress)
        optimizer.zero_grad(set_to_none=True)
        total(losses).backward()
        optimizer.step()
        objective.after_step()

    return step


def forward_fn(fn):
    def forward() -> None:
        with torch.no_grad():
            fn()

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = args.device
    batch = synthetic_batch(args.batch, args.size, device)
    folders = hf_teachers(Path(tempfile.mkdtemp(prefix="detrdistill-bench-hf-")))
    teachers = {name: adapter(folder, device) for name, folder in folders.items()}
    imported = import_hf(folders["rtdetr_v2"])
    native = imported.model.to(device).eval()
    student = build_model(STUDENT).to(device)
    criterion = build_criterion(3, MatcherConfig(), LossConfig(classification="varifocal"))

    def objective(teacher: Teacher):
        return build_objective(DETRDistillConfig(), criterion, Student(student, STUDENT), teacher)

    pixel_mask = (~batch.pixel_mask).long()
    cases = {"student": step_fn(student, DetectionObjective(criterion), batch)}
    for name, teacher in teachers.items():
        hf_model = teacher.model
        pixels = ((batch.images * teacher.in_std + teacher.in_mean) - teacher.out_mean) / (
            teacher.out_std
        )
        cases[f"{name} bare"] = forward_fn(
            lambda m=hf_model, p=pixels: m(pixel_values=p, pixel_mask=pixel_mask)
        )
        cases[f"{name} adapter"] = forward_fn(lambda t=teacher: t(batch.images, batch.pixel_mask))
        cases[f"{name} step"] = step_fn(
            student, objective(Teacher(teacher, teacher.profile, teacher.covered)), batch
        )
    cases["native forward"] = forward_fn(lambda: native(batch.images, batch.pixel_mask))
    cases["native step"] = step_fn(student, objective(Teacher(native, imported.config)), batch)
    times = interleaved_times(cases, args.repeats, device=device)
    report(times, args)


def report(times: dict[str, list[float]], args) -> None:
    med = {name: statistics.median(values) for name, values in times.items()}
    rows, targets = [], []
    for name in ("rtdetr_v2", "d_fine"):
        overhead = med[f"{name} adapter"] / med[f"{name} bare"] - 1
        ratio = med[f"{name} step"] / (med["student"] + med[f"{name} adapter"])
        rows.append(
            [
                f"HF {name}",
                f"{med[f'{name} bare']:.1f}",
                f"{med[f'{name} adapter']:.1f}",
                f"{overhead:+.1%}",
                f"{med[f'{name} step']:.1f}",
                f"{ratio:.2f}",
            ]
        )
        targets.append(
            target_row(
                f"HF teacher adapter overhead ({name}) <= 5% of its forward",
                f"{overhead:+.1%}",
                verdict(overhead, TARGET),
            )
        )
    native_ratio = med["native step"] / (med["student"] + med["native forward"])
    rows.append(
        [
            "native rtdetr_v2 (same weights as HF rtdetr_v2)",
            "-",
            f"{med['native forward']:.1f}",
            "-",
            f"{med['native step']:.1f}",
            f"{native_ratio:.2f}",
        ]
    )
    header = [
        "teacher",
        "HF forward ms",
        "teacher forward ms (adapter / native)",
        "adapter overhead",
        "distill step ms",
        "step / (student + teacher)",
    ]
    notes = [
        f"Student step alone: {med['student']:.1f} ms (quickstart RT-DETRv2 student, 32 wide).",
        f"Batch {args.batch} x {args.size} px synthetic shapes, {args.repeats} interleaved rounds, "
        "medians; DETRDistill with the paper's defaults (A 1/5/2, B 1, C 2/5/2).",
        "Teachers: random weights, R-18-vd backbone, 256 wide, 300 queries, 3 decoder layers.",
        "D-FINE's adapter also computes every decoder layer's class head and box distribution, "
        "which its eval forward skips: that work is part of the overhead.",
    ]
    write_results(
        "hf_teacher",
        "Hugging Face teachers: adapter overhead and distillation step",
        vars(args),
        {"": (header, rows)},
        notes,
        targets,
    )


if __name__ == "__main__":
    main()
