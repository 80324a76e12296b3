"""Parameter counts and forward/backward time per image of every architecture.

    python bench/model_speed.py [--sizes 128 512] [--repeats 3] [--device cpu] [--out FILE]

Prints a table (and writes it as markdown to --out) for the tiny and the ResNet-50 configs.
Times are the median over repeats after one warm-up, batch of 2 images, per image.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from detr_models.build import build_model
from detr_models.config import ModelConfig, model_config_from_dict, tiny_config
from detr_models.criterion import SetCriterion, total
from detr_models.matcher import HungarianMatcher

# name -> (architecture, extra config)
VARIANTS = {
    "detr": ("detr", {}),
    "conditional_detr": ("conditional_detr", {}),
    "dab_detr": ("dab_detr", {}),
    "deformable": ("deformable_detr", {}),
    "deformable+refine": ("deformable_detr", {"box_refine": True}),
    "deformable two-stage": ("deformable_detr", {"box_refine": True, "two_stage": True}),
    "dab-deformable": ("deformable_detr", {"box_refine": True, "anchor_queries": True}),
}
DEFORMABLE_TINY = {"levels": ["C3", "C4", "C5"]}
DEFORMABLE_R50 = {"levels": ["C3", "C4", "C5"], "ffn_dim": 1024}


def configs(name: str) -> dict[str, ModelConfig]:
    arch, extra = VARIANTS[name]
    deformable = arch == "deformable_detr"
    tiny = tiny_config(arch, **extra, **(DEFORMABLE_TINY if deformable else {}))
    r50 = model_config_from_dict(
        {
            "architecture": arch,
            "num_classes": 80,
            "num_queries": 100 if arch == "detr" else 300,
            **extra,
            **(DEFORMABLE_R50 if deformable else {}),
        }
    )
    return {"tiny": tiny, "resnet50": r50}


def time_step(
    model, criterion, size: int, batch: int, repeats: int, device: str
) -> tuple[float, float]:
    images = torch.randn(batch, 3, size, size, device=device)
    targets = [
        {
            "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]], device=device),
            "labels": torch.tensor([0], device=device),
        }
        for _ in range(batch)
    ]
    forward, step = [], []
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            model.eval()(images)
        _sync(device)
        mid = time.perf_counter()
        model.train()
        losses, _ = criterion(model(images), targets)
        total(losses).backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        end = time.perf_counter()
        if i:  # the first pass is warm-up
            forward.append((mid - start) / batch)
            step.append((end - mid) / batch)
    return statistics.median(forward), statistics.median(step)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--configs", nargs="+", default=["tiny", "resnet50"])
    args = parser.parse_args()
    torch.manual_seed(0)
    header = ["arch", "config", "params (M)"]
    header += [f"{kind} {s}px (ms/img)" for s in args.sizes for kind in ("fwd", "fwd+bwd")]
    rows = []
    for variant in args.variants:
        for name, config in configs(variant).items():
            if name not in args.configs:
                continue
            model = build_model(config).to(args.device)
            criterion = SetCriterion(config.num_classes, HungarianMatcher())
            params = sum(p.numel() for p in model.parameters()) / 1e6
            row = [variant, name, f"{params:.2f}"]
            for size in args.sizes:
                fwd, step = time_step(model, criterion, size, args.batch, args.repeats, args.device)
                row += [f"{fwd * 1000:.1f}", f"{step * 1000:.1f}"]
            rows.append(row)
            print(" | ".join(row), flush=True)
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    print(f"\nmodel speed on {device}, batch {args.batch}\n{table}")
    if args.out:
        args.out.write_text(f"model speed on {device}, batch {args.batch}\n\n{table}\n")


if __name__ == "__main__":
    main()
