"""The deployment argument for real-time students: eval speed of RT-DETRv2 against Deformable
DETR at the COCO recipes' sizes, on this machine's CPU.

    python -m bench.realtime [--size 640] [--batch 1] [--rounds 5]

Models from the recipes (random weights: speed does not depend on them): RT-DETRv2-R18
(coco_rtdetr_v2_r18.yaml), RT-DETRv2-R50 (the teacher of coco_detrdistill_rtdetr_v2_r50_r18.yaml)
and Deformable DETR R-50 with box refinement (coco_deformable_detr_r50.yaml), 80 classes, one
no-grad eval forward on a square image of `--size` pixels; median of interleaved rounds after
a warm-up round.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench.common import ROOT, interleaved_times, write_results
from detr_models.build import build_model
from orchestrator.spec.loader import load_spec

EXPERIMENTS = ROOT / "experiments"


def configs() -> dict[str, object]:
    r18 = load_spec(EXPERIMENTS / "coco_rtdetr_v2_r18.yaml").student
    r50 = load_spec(EXPERIMENTS / "coco_detrdistill_rtdetr_v2_r50_r18.yaml").teacher.model
    deformable = load_spec(EXPERIMENTS / "coco_deformable_detr_r50.yaml").student
    return {
        "RT-DETRv2-R18": r18,
        "RT-DETRv2-R50": r50,
        "Deformable DETR R-50 + box refine": deformable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    mask = torch.zeros(args.batch, args.size, args.size, dtype=torch.bool)
    models, params = {}, {}
    for name, config in configs().items():
        config = config.with_classes(80).model_copy(update={"backbone_weights": None})
        models[name] = build_model(config).eval()
        params[name] = sum(p.numel() for p in models[name].parameters()) / 1e6

    def forward(model):
        @torch.no_grad()
        def run() -> None:
            model(images, mask)

        return run

    times = interleaved_times({n: forward(m) for n, m in models.items()}, args.rounds)
    base = statistics.median(times["Deformable DETR R-50 + box refine"])
    rows = []
    for name, values in times.items():
        ms = statistics.median(values)
        rows.append(
            [
                name,
                f"{params[name]:.1f}",
                f"{ms:.0f}",
                f"{1000 * args.batch / ms:.2f}",
                f"{base / ms:.1f}x",
            ]
        )
    write_results(
        "realtime_cpu",
        "Real-time students: eval speed on the CPU",
        {**vars(args), "threads": torch.get_num_threads()},
        {
            f"No-grad eval forward, batch {args.batch} at {args.size}x{args.size} px, median of "
            f"{args.rounds} interleaved rounds, {torch.get_num_threads()} threads:": (
                ["model", "params (M)", "ms", "images/s", "speed vs Deformable R-50"],
                rows,
            )
        },
    )


if __name__ == "__main__":
    main()
