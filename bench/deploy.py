"""What deploying each architecture costs: parameters, GFLOPs, onnxruntime and PyTorch CPU
latency at batch 1, and the exported graph's agreement with PyTorch.

    python -m bench.deploy [--size 640] [--runs 5] [--only NAME ...]

Models from the recipes, random weights (speed and size do not depend on them; nothing is
downloaded), 80 classes: the quickstart students (tiny, at their 128 px), RT-DETRv2-R18 and
Deformable DETR R-18, and at R-50 DETR, Deformable DETR with box refinement and RT-DETRv2.
Each model is exported with `detrdistill export`'s code (dynamic height and width), checked
with onnxruntime at three sizes (max |difference| of probabilities and normalised boxes), then
timed at a square of `--size` px (median of `--runs` after two warm-up runs; the thread count
is torch's and onnxruntime's here). GFLOPs count grid_sample's bilinear sampling (see
orchestrator/deploy/cost.py).
"""

from __future__ import annotations

import argparse

import torch

from bench.common import ROOT, write_results
from detr_models.build import build_model
from orchestrator.deploy.cost import deploy_cost
from orchestrator.spec.loader import load_spec

EXPERIMENTS = ROOT / "experiments"
# name: (recipe, "student" or "teacher", size: None for --size)
MODELS = {
    "tiny Deformable DETR (quickstart student)": ("quickstart_student.yaml", "student", 128),
    "tiny RT-DETRv2 (quickstart student)": ("quickstart_rtdetr_student.yaml", "student", 128),
    "RT-DETRv2-R18": ("coco_rtdetr_v2_r18.yaml", "student", None),
    "Deformable DETR R-18 + box refine": (
        "coco_detrdistill_deformable_r101_r18.yaml",
        "student",
        None,
    ),
    "DETR R-50": ("coco_detr_r50.yaml", "student", None),
    "Deformable DETR R-50 + box refine": ("coco_deformable_detr_r50.yaml", "student", None),
    "RT-DETRv2-R50": ("coco_detrdistill_rtdetr_v2_r50_r18.yaml", "teacher", None),
}


def model_of(recipe: str, role: str):
    spec = load_spec(EXPERIMENTS / recipe)
    config = spec.student if role == "student" else spec.teacher.model
    config = config.model_copy(update={"backbone_weights": None, "weights": None})
    return build_model(config.with_classes(80)).eval(), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=list(MODELS))
    args = parser.parse_args()
    rows = []
    for name in args.only or MODELS:
        recipe, role, size = MODELS[name]
        torch.manual_seed(0)
        model, config = model_of(recipe, role)
        side = size or args.size
        print(f"{name}: exporting and timing at {side} px", flush=True)
        extra = {"architecture": config.architecture, "eval_size": side}
        cost = deploy_cost(model, extra, size=side, runs=args.runs)
        rows.append(
            [
                name,
                f"{side}",
                f"{cost['params_M']:.1f}",
                f"{cost['gflops']:.3g}",
                f"{cost['onnx_ms']:.0f}",
                f"{cost['torch_ms']:.0f}",
                f"{cost['torch_ms'] / cost['onnx_ms']:.2f}",
                f"{cost['onnx_max_diff']:.0e}",
                f"{cost['onnx_swapped']:.1%}",
            ]
        )
    header = [
        "model",
        "px",
        "params M",
        "GFLOPs",
        "ORT CPU ms",
        "PyTorch CPU ms",
        "PyTorch / ORT",
        "ONNX max diff",
        "swapped",
    ]
    notes = [
        f"Batch 1, {torch.get_num_threads()} threads, median of {args.runs} runs after 2 warm-up "
        "runs; random weights, 80 classes; ONNX opset 18, dynamic height and width.",
        "ONNX max diff: the largest |difference| between onnxruntime and PyTorch over "
        "probabilities and normalised boxes at three sizes (the export's own check), the two "
        "answers paired as sets; swapped: the largest share of an image's predictions beyond "
        "1e-3 (query selection with near-tied scores picking another token; up to 5% pass).",
    ]
    write_results(
        "deploy_cpu",
        "Deploying the student: size, GFLOPs and CPU latency, PyTorch vs onnxruntime",
        vars(args),
        {"": (header, rows)},
        notes,
    )


if __name__ == "__main__":
    main()
