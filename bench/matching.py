"""How much of a training step the Hungarian matching takes, and batched vs per-image cost.

    python -m bench.matching [--archs ...] [--batch 8] [--queries 100] [--device cpu|cuda]

1. Share of the step: real training steps (bench/pairs.py, forward, losses, backward, AdamW) with
   every matching call timed as it runs: `HungarianMatcher` (cost + assignment, every decoder
   stage), its `cost_matrices` (OD-DETR's auxiliary groups) and DETRDistill's student-to-teacher
   matching. Target: <= 5% of the student-alone step at batch 8, 100 queries (ResNet-50 config).
2. The batched cost (one [B, Q, sum M] matrix, then one assignment per image) against building
   the cost image by image in a Python loop, at COCO-like and dense target counts; both must
   give the same assignments.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

import distill.logits_distill as logits_distill
from bench.common import interleaved_medians, sync, target_row, verdict, write_results
from bench.pairs import ARCHS, Setup, synthetic_batch
from detr_models.matcher import HungarianMatcher, solve_assignment

TARGET_PERCENT = 5.0


class MatchTimer:
    """Adds the wall time of every matching call to `seconds` while installed."""

    def __init__(self, device) -> None:
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self._saved = []

    def wrap(self, owner, name: str) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))

        @functools.wraps(original)
        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            result = original(*args, **kwargs)
            sync(self.device)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return result

        setattr(owner, name, timed)

    def __enter__(self):
        self.wrap(HungarianMatcher, "forward")
        self.wrap(HungarianMatcher, "cost_matrices")
        self.wrap(logits_distill, "match_to_teacher")
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def step_share(setup: Setup, case: str, batch, repeats: int, device) -> dict[str, float]:
    step = setup.step_fn(setup.objective(case), batch)
    step()  # warm-up
    steps, matching, calls = [], [], []
    for _ in range(repeats):
        with MatchTimer(device) as timer:
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            steps.append(time.perf_counter() - start)
        matching.append(timer.seconds)
        calls.append(timer.calls)
    share = statistics.median(m / s for m, s in zip(matching, steps, strict=True)) * 100
    return {
        "step_ms": statistics.median(steps) * 1000,
        "match_ms": statistics.median(matching) * 1000,
        "calls": statistics.median(calls),
        "share": share,
    }


def random_targets(batch: int, per_image: int, device) -> list[dict]:
    generator = torch.Generator().manual_seed(per_image)
    targets = []
    for _ in range(batch):
        centre = torch.rand(per_image, 2, generator=generator) * 0.6 + 0.2
        size = torch.rand(per_image, 2, generator=generator) * 0.3 + 0.05
        targets.append(
            {
                "boxes": torch.cat([centre, size], 1).to(device),
                "labels": torch.randint(0, 80, (per_image,), generator=generator).to(device),
            }
        )
    return targets


def loop_match(matcher: HungarianMatcher, logits, boxes, targets) -> list:
    """The cost built image by image, then the same assignment."""
    out = []
    for b, target in enumerate(targets):
        (cost,) = matcher.cost_matrices(logits[b : b + 1], boxes[b : b + 1], [target])
        out.append(solve_assignment(cost.cpu()))
    return out


def batched_vs_loop(args) -> list[list]:
    rows = []
    matcher = HungarianMatcher()
    torch.manual_seed(0)
    logits = torch.randn(args.batch, args.queries, 80, device=args.device)
    boxes = torch.rand(args.batch, args.queries, 4, device=args.device) * 0.5 + 0.25
    for per_image in args.targets_per_image:
        targets = random_targets(args.batch, per_image, args.device)
        batched = matcher(logits, boxes, targets)
        looped = loop_match(matcher, logits, boxes, targets)
        same = all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(batched, looped, strict=True)
        )
        if not same:
            raise AssertionError("batched and per-image matching disagree")
        cost_only = functools.partial(matcher.cost_matrices, logits, boxes, targets)
        ms = interleaved_medians(
            {
                "batched": lambda targets=targets: matcher(logits, boxes, targets),
                "loop": lambda targets=targets: loop_match(matcher, logits, boxes, targets),
                "cost": cost_only,
            },
            args.micro_repeats,
            warmup=2,
            device=args.device,
        )
        rows.append(
            [
                per_image,
                f"{ms['batched']:.2f}",
                f"{ms['cost']:.2f}",
                f"{ms['loop']:.2f}",
                f"{ms['loop'] / ms['batched']:.2f}",
                "yes" if same else "no",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--size", type=int, default=128, help="image side (px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-repeats", type=int, default=20)
    parser.add_argument("--targets-per-image", type=int, nargs="+", default=[3, 7, 20])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    batch = synthetic_batch(args.batch, args.size, args.device)
    share_rows, verdicts, targets = [], [], []
    for config in ("resnet50", "tiny"):
        cases = ("student",) if config == "resnet50" else ("student", "detrdistill", "od_detr")
        for arch in args.archs:
            setup = Setup(arch, config, args.device, args.queries)
            for case in cases:
                r = step_share(setup, case, batch, args.repeats, args.device)
                share_rows.append(
                    [
                        arch,
                        config,
                        case,
                        f"{r['step_ms']:.0f}",
                        f"{r['match_ms']:.1f}",
                        int(r["calls"]),
                        f"{r['share']:.1f}%",
                    ]
                )
                print(" | ".join(str(c) for c in share_rows[-1]), flush=True)
                if config == "resnet50":
                    verdicts.append(
                        [arch, f"{r['share']:.1f}%", verdict(r["share"], TARGET_PERCENT)]
                    )
                    targets.append(
                        target_row(
                            f"matching <= {TARGET_PERCENT}% of the step, batch {args.batch}, "
                            f"{args.queries} queries, {arch} R-50 at {args.size} px, "
                            f"{args.device}",
                            f"{r['share']:.1f}%",
                            verdicts[-1][-1],
                        )
                    )
    micro = batched_vs_loop(args)
    write_results(
        f"matching_{torch.device(args.device).type}",
        f"Hungarian matching ({args.device})",
        vars(args),
        {
            f"Matching time inside real training steps, batch {args.batch}, {args.queries} "
            f"queries, {args.size} px (median of {args.repeats} steps):": (
                ["arch", "config", "case", "step ms", "matching ms", "calls", "share"],
                share_rows,
            ),
            f"Target: matching <= {TARGET_PERCENT}% of the student step (ResNet-50 config):": (
                ["arch", "share", "target"],
                verdicts,
            ),
            f"Batched cost vs a per-image loop, batch {args.batch}, {args.queries} queries, "
            "80 classes (ms per call; `cost` is the batched cost alone):": (
                ["targets/image", "batched ms", "cost ms", "loop ms", "loop / batched", "same"],
                micro,
            ),
        },
        targets=targets,
    )


if __name__ == "__main__":
    main()
