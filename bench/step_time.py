"""Step time of every distillation method against training the student alone.

    python -m bench.step_time [--archs ...] [--configs tiny resnet50] [--device cpu|cuda]

For each architecture and config (see bench/pairs.py), the median milliseconds of one training
step (forward, losses, backward, AdamW, after_step) of: the student alone; the teacher's forward
alone; the student with each DETRDistill component alone (A logits, B feature, C query prior);
full DETRDistill; OD-DETR (EMA teacher, matching, initial-query and auxiliary groups). The
cases take turns, `--repeats` rounds after a warm-up round. The overhead ratio divides a
distillation step by (student step + its teacher's forward): for DETRDistill the R-101 teacher,
for OD-DETR the EMA teacher (the student's own architecture). Target: <= 1.15 at ResNet-50.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from bench.common import interleaved_times, target_row, verdict, write_results
from bench.pairs import ARCHS, CONFIGS, Setup, image_size, synthetic_batch
from detr_models import detector
from detr_models.attention import BlockDiagonal

TARGET = 1.15
DENSE = ("query_prior_dense", "detrdistill_dense", "od_detr_dense")
CASES = ("student", "logits", "feature", "query_prior", "detrdistill", "od_detr")
LABELS = {
    "student": "student alone",
    "teacher": "teacher forward alone",
    "ema": "EMA teacher forward alone",
    "logits": "student + A logits",
    "feature": "student + B feature",
    "query_prior": "student + C query prior",
    "detrdistill": "student + DETRDistill (A+B+C)",
    "od_detr": "student + OD-DETR",
    "query_prior_dense": "student + C query prior, dense group mask (before)",
    "detrdistill_dense": "student + DETRDistill, dense group mask (before)",
    "od_detr_dense": "student + OD-DETR, dense group mask (before)",
}


def measure(arch: str, config: str, args) -> dict[str, list[float]]:
    setup = Setup(arch, config, args.device)
    batch_size = args.batch if config == "tiny" else args.r50_batch
    batch = synthetic_batch(batch_size, image_size(config, args.r50_size), args.device)
    cases = {name: setup.step_fn(setup.objective(name), batch) for name in CASES}
    if args.dense_mask_cases:
        for name in ("query_prior", "detrdistill", "od_detr"):
            cases[f"{name}_dense"] = dense_mask(cases[name], args.device)
    cases["teacher"] = setup.teacher_forward_fn(setup.teacher, batch)
    # the EMA teacher is a copy of the student architecture, always in eval mode
    cases["ema"] = setup.teacher_forward_fn(copy.deepcopy(setup.student), batch)
    repeats = args.repeats if config == "tiny" else args.r50_repeats
    return interleaved_times(cases, repeats, device=args.device)


def dense_mask(step, device):
    """`step` with query groups isolated by a dense [Q,Q] self-attention mask, as before
    `BlockDiagonal` (the comparison behind that change)."""

    def dense_step() -> None:
        saved = detector.BlockDiagonal
        detector.BlockDiagonal = lambda sizes: BlockDiagonal(sizes).dense(device)
        try:
            step()
        finally:
            detector.BlockDiagonal = saved

    return dense_step


def device_name(device: str) -> str:
    return "CPU" if device == "cpu" else torch.cuda.get_device_name()


def ratio(rounds: dict[str, list[float]], case: str) -> float:
    """The median over rounds of step / (student step + teacher forward), each round's own
    times together: steadier than a ratio of medians on a machine whose speed drifts."""
    teacher = rounds["ema"] if case.startswith("od_detr") else rounds["teacher"]
    return statistics.median(
        c / (s + t) for c, s, t in zip(rounds[case], rounds["student"], teacher, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--batch", type=int, default=8, help="tiny config batch")
    parser.add_argument("--r50-batch", type=int, default=2)
    parser.add_argument("--r50-size", type=int, default=256, help="R-50 image side (px)")
    parser.add_argument("--repeats", type=int, default=10, help="tiny config rounds")
    parser.add_argument("--r50-repeats", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--name", default=None, help="result file name")
    parser.add_argument(
        "--dense-mask-cases",
        action="store_true",
        help="also time the group cases with the dense self-attention mask used before",
    )
    args = parser.parse_args()
    rows, ratios, targets = [], [], []
    for config in args.configs:
        for arch in args.archs:
            rounds = measure(arch, config, args)
            ms = {name: statistics.median(values) for name, values in rounds.items()}
            for case in ("student", "teacher", "ema", *CASES[1:], *DENSE):
                if case not in ms:
                    continue
                overhead = (
                    "" if case in ("student", "teacher", "ema") else f"{ratio(rounds, case):.2f}"
                )
                rows.append([arch, config, LABELS[case], f"{ms[case]:.0f}", overhead])
            for case in ("detrdistill", "od_detr"):
                value = ratio(rounds, case)
                target = verdict(value, TARGET) if config == "resnet50" else "(tiny: no target)"
                ratios.append([arch, config, LABELS[case], f"{value:.2f}", target])
                if config == "resnet50":
                    targets.append(
                        target_row(
                            f"{LABELS[case]} step / (student step + "
                            f"{'EMA' if case == 'od_detr' else 'teacher'} forward) <= "
                            f"{TARGET}, {arch} R-50 at {args.r50_size} px, "
                            f"{device_name(args.device)}",
                            f"{value:.2f}",
                            target,
                        )
                    )
            print(f"{arch} {config}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items()))
    device = device_name(args.device)
    write_results(
        args.name or f"step_time_{torch.device(args.device).type}",
        f"Step time ({device})",
        vars(args),
        {
            f"Median ms per training step; tiny: batch {args.batch} at 128 px; resnet50: batch "
            f"{args.r50_batch} at {args.r50_size} px. Overhead = median over rounds of step / (student "
            "step + teacher forward).": (["arch", "config", "case", "ms", "overhead"], rows),
            f"Overhead ratios against the target (<= {TARGET} at ResNet-50):": (
                ["arch", "config", "method", "ratio", "target"],
                ratios,
            ),
        },
        targets=targets,
    )


if __name__ == "__main__":
    main()
