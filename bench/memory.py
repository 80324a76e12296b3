"""Peak memory of a distillation training step against the student-alone step.

    python -m bench.memory [--archs ...] [--configs tiny resnet50] [--device cpu|cuda]

Every case runs in a fresh process (so one case's high-water mark cannot hide another's):
build the models and the batch, run `--steps` training steps (bench/pairs.py). On the CPU the
peak is the process's peak resident set (VmHWM, reset once the models are built), on a GPU
torch's peak allocated memory; "added by steps" is the peak minus what was held before the first
step (the models, the teacher included): the activations, gradients and optimiser state.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from bench.common import ROOT, target_row, write_results
from bench.pairs import ARCHS, CONFIGS, Setup, image_size, synthetic_batch

CASES = ("student", "detrdistill", "od_detr")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM), so building the models does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(reset: bool) -> float:
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(arch: str, config: str, case: str, args) -> dict:
    torch.manual_seed(0)
    setup = Setup(arch, config, args.device)
    batch_size = args.batch if config == "tiny" else args.r50_batch
    batch = synthetic_batch(batch_size, image_size(config, args.r50_size), args.device)
    step = setup.step_fn(setup.objective(case), batch)
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        before = current_rss_mb()
        reset = reset_peak_rss()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mb(reset)
    return {"before_mb": before, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--r50-batch", type=int, default=2)
    parser.add_argument("--r50-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", nargs=3, metavar=("ARCH", "CONFIG", "CASE"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    rows, targets = [], []
    for config in args.configs:
        for arch in args.archs:
            base = None
            for case in CASES:
                command = [sys.executable, "-m", "bench.memory", "--child", arch, config, case]
                for flag in ("batch", "r50_batch", "r50_size", "steps", "device"):
                    command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                added = r["peak_mb"] - r["before_mb"]
                base = base or r
                rows.append(
                    [
                        arch,
                        config,
                        case,
                        f"{r['before_mb']:.0f}",
                        f"{r['peak_mb']:.0f}",
                        f"{added:.0f}",
                        f"{r['peak_mb'] / base['peak_mb']:.2f}",
                        f"{added / (base['peak_mb'] - base['before_mb']):.2f}",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
                if case != "student" and config == "resnet50":
                    targets.append(
                        target_row(
                            f"peak memory of a {case} step vs the student step, {arch} R-50, "
                            f"{args.device} (no target: reported)",
                            f"{rows[-1][-2]}x peak, {rows[-1][-1]}x added by the step",
                            "reported",
                        )
                    )
    kind = torch.device(args.device).type
    measure = (
        "peak resident set (VmHWM, reset after the models are built)"
        if kind == "cpu"
        else "torch peak allocated"
    )
    write_results(
        f"memory_{kind}",
        f"Peak memory of a training step ({args.device})",
        vars(args),
        {
            f"MB, {measure}; tiny: batch {args.batch} at 128 px; resnet50: batch "
            f"{args.r50_batch} at {args.r50_size} px; one fresh process per row:": (
                [
                    "arch",
                    "config",
                    "case",
                    "before steps",
                    "peak",
                    "added by steps",
                    "peak / student",
                    "added / student's",
                ],
                rows,
            )
        },
        targets=targets,
    )


if __name__ == "__main__":
    main()
