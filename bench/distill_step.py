"""Step time of DETRDistill and OD-DETR against training the student alone, and the
teacher's forward.

    python bench/distill_step.py [--batch 8] [--repeats 10]

Uses the quickstart pair (experiments/quickstart.yaml teacher, quickstart_student.yaml
student) on synthetic 128 px images, on the CPU, with random weights (speed does not depend on
training), and prints a table of milliseconds per step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from detr_models.build import build_model
from detr_models.criterion import SetCriterion, total
from detr_models.matcher import HungarianMatcher
from distill.detrdistill import DETRDistill
from distill.od_detr import ODDETR
from orchestrator.dataset import CocoDetection
from orchestrator.engine import DetectionObjective, Progress
from orchestrator.loader import collate_detection
from orchestrator.spec_loader import load_spec
from orchestrator.synth import ensure_shapes, split_paths
from orchestrator.train import detrdistill_config, od_detr_config
from orchestrator.transforms import eval_transforms

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    root = ensure_shapes(
        Path(tempfile.gettempdir()) / "detrdistill-bench", num_train=args.batch, num_val=1
    )
    dataset = CocoDetection(*split_paths(root, "train"), transforms=eval_transforms(128, 213))
    batch = collate_detection([dataset[i] for i in range(args.batch)])
    distill_spec = load_spec(ROOT / "experiments" / "quickstart_distill.yaml")
    t_cfg = distill_spec.teacher.model.to_model_config(3)
    s_cfg = distill_spec.student.to_model_config(3)
    teacher, student = build_model(t_cfg), build_model(s_cfg)
    criterion = SetCriterion(3, HungarianMatcher())
    alone = DetectionObjective(criterion)
    distill = DETRDistill(
        teacher, t_cfg, s_cfg, criterion, detrdistill_config(distill_spec.distill)
    )
    online_spec = load_spec(ROOT / "experiments" / "shapes_deformable_oddetr.yaml")
    online = ODDETR(student, criterion, od_detr_config(online_spec.distill), anchors=False)
    progress = Progress(0, 0, 1, 1)

    def step(objective) -> None:
        losses, _ = objective(student, batch, progress)
        total(losses).backward()
        student.zero_grad(set_to_none=True)
        objective.after_step()  # the EMA update, for OD-DETR

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher.eval()(batch.images, batch.pixel_mask)

    rows = [
        ("student alone (fwd+bwd+loss)", timed(lambda: step(alone), args.repeats)),
        ("student + DETRDistill (A+B+C)", timed(lambda: step(distill), args.repeats)),
        (
            "student + OD-DETR (EMA, matching, init group, aux groups)",
            timed(lambda: step(online), args.repeats),
        ),
        ("teacher forward only", timed(teacher_forward, args.repeats)),
    ]
    print(
        f"| step, batch {args.batch} at 128 px, CPU {torch.get_num_threads()} threads | ms | ms/img |"
    )
    print("|---|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.0f} | {ms / args.batch:.1f} |")


if __name__ == "__main__":
    main()
