"""Where multi-scale deformable attention spends its time: sampling vs projections.

    python bench/deformable_profile.py [--size 512] [--queries 300] [--device cpu]

Profiles forward+backward of one MultiScaleDeformableAttention (width 256, 8 heads, 4 levels,
4 points) as the encoder uses it (every token is a query) and as the decoder does (300 queries),
on the feature pyramid of a SIZE x SIZE image (strides 8, 16, 32, 64), and prints the share of
time in grid_sample (the sampling), in the linear projections, and in everything else.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from detr_models.deformable_attention import MultiScaleDeformableAttention

SAMPLING = ("grid_sampler", "grid_sample")
PROJECTION = ("addmm", "linear", "mm", "matmul", "bmm")


def classify(name: str) -> str:
    lowered = name.lower()
    if any(key in lowered for key in SAMPLING):
        return "sampling (grid_sample)"
    if any(key in lowered for key in PROJECTION):
        return "projections (linear)"
    return "other (softmax, reshapes, offsets)"


def profile_case(
    queries: int | None, size: int, device: str, repeats: int
) -> tuple[dict[str, float], float]:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(256, 8, 4, 4).to(device)
    shapes = torch.tensor([[size // s, size // s] for s in (8, 16, 32, 64)], device=device)
    tokens = int((shapes[:, 0] * shapes[:, 1]).sum())
    q = tokens if queries is None else queries
    value = torch.randn(2, tokens, 256, device=device, requires_grad=True)
    query = torch.randn(2, q, 256, device=device, requires_grad=True)
    refs = torch.rand(2, q, 4, 2, device=device)
    attn(query, refs, value, shapes).sum().backward()  # warm-up
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if device.startswith("cuda") else []
    )
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            attn(query, refs, value, shapes).sum().backward()
    totals: dict[str, float] = {}
    ops: dict[str, float] = {}
    for event in prof.key_averages():
        # self time, so nested ops are not counted twice
        t = event.self_device_time_total if device.startswith("cuda") else event.self_cpu_time_total
        totals[classify(event.key)] = totals.get(classify(event.key), 0.0) + t
        ops[event.key] = ops.get(event.key, 0.0) + t
    total = sum(totals.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    print("    top ops: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top))
    return {k: v / total for k, v in totals.items()}, total / repeats / 1000


def _share(shares: dict[str, float], prefix: str) -> str:
    return f"{100 * sum(v for k, v in shares.items() if k.startswith(prefix)):.0f}%"


def _share(shares: dict[str, float], prefix: str) -> str:
    return f"{100 * sum(v for k, v in shares.items() if k.startswith(prefix)):.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| case | ms per fwd+bwd | sampling | projections | other |\n|---|---|---|---|---|")
    for label, queries in (
        ("encoder (all tokens)", None),
        (f"decoder ({args.queries} queries)", args.queries),
    ):
        shares, ms = profile_case(queries, args.size, args.device, args.repeats)
        cells = [_share(shares, key) for key in ("sampling", "projections", "other")]
        print(f"| {label}, {args.size}px | {ms:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
