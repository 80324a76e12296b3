"""Accuracy at an equal training budget on the synthetic shapes: teacher, baseline student,
DETRDistill student, OD-DETR student (and its EMA model), over seeds.

    python -m bench.accuracy [--epochs 12] [--seeds 0 1 2] [--parallel 2] [--suite rtdetr]
    python -m bench.accuracy --suite full | oddetr     (the harder benchmark: accuracy_full.py)

The quickstart pair (experiments/quickstart.yaml teacher, quickstart_student.yaml baseline,
quickstart_distill.yaml DETRDistill, shapes_deformable_oddetr.yaml OD-DETR): every student
trains `--epochs` epochs on the same 256 images (lr step 2 epochs before the end) and is
evaluated with pycocotools on the 32 validation images at the end. `--suite rtdetr`: the same
teacher, RT-DETRv2 students of the same size (quickstart_rtdetr_*.yaml,
shapes_rtdetr_oddetr.yaml): a heterogeneous pair, written to accuracy_rtdetr.md. The teacher trains once, with
its own recipe (`--teacher-epochs`), and DETRDistill distils from it. Runs use the plain engine
in `--parallel` processes of one thread each (independent runs parallelise better than threads
on small models). Instability: the mean over epochs of the query slots per probe image whose
matched GT changed since the previous epoch (last decoder stage).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from bench.accuracy_full import SUITES as FULL_SUITES
from bench.accuracy_full import TEACHER_EPOCHS, run_suite
from bench.accuracy_report import build_tables
from bench.accuracy_runs import one_thread
from bench.common import ROOT, mean_std, target_row, write_results

WORK = ROOT / "runs" / "bench_accuracy"
TEACHER = "experiments/quickstart.yaml"
SUITES = {
    "deformable": {
        "baseline": "experiments/quickstart_student.yaml",
        "DETRDistill": "experiments/quickstart_distill.yaml",
        "OD-DETR": "experiments/shapes_deformable_oddetr.yaml",
    },
    "rtdetr": {
        "baseline": "experiments/quickstart_rtdetr_student.yaml",
        "DETRDistill": "experiments/quickstart_rtdetr_distill.yaml",
        "OD-DETR": "experiments/shapes_rtdetr_oddetr.yaml",
    },
}


def train(path: str, seed: int, overrides: list[str], folder: str) -> dict:
    """Train one spec in this (pool) process; returns its final metrics and curves."""
    from bench.local_training import train_local
    from orchestrator.spec.loader import load_spec
    from orchestrator.spec.paths import resolve_paths
    from orchestrator.training.checkpoints import MODEL_FILE

    spec = resolve_paths(load_spec(ROOT / path, [f"seed={seed}", *overrides]), ROOT)
    start = time.perf_counter()
    reporter = train_local(spec, folder)
    last = reporter.history[-1]
    return {
        "seed": seed,
        "minutes": (time.perf_counter() - start) / 60,
        "final": {k: v for k, v in last.items() if k.startswith(("val/", "val_ema/"))},
        "instability": reporter.metric("stability/instability"),
        "flip_rate": reporter.metric("stability/gt_flip_rate"),
        "ema_instability": reporter.metric("stability_ema/instability"),
        "model_file": str(reporter.last_checkpoint / MODEL_FILE),
    }


def mean_ap(group: list[dict]) -> float:
    return statistics.mean(r["final"]["val/AP"] for r in group)


def summary_rows(runs: dict[str, list[dict]]) -> list[list]:
    rows = []
    for tag, group in runs.items():

        def values(key: str, group=group) -> list[float]:
            return [r["final"][key] for r in group if key in r["final"]]

        rows.append(
            [
                tag,
                len(group),
                mean_std(values("val/AP")),
                mean_std(values("val/AP50")),
                mean_std(values("val_ema/AP")),
                mean_std(values("val_ema/AP50")),
                mean_std([statistics.mean(r["instability"]) for r in group if r["instability"]]),
                mean_std([statistics.mean(r["flip_rate"]) for r in group if r["flip_rate"]]),
                f"{statistics.mean(r['minutes'] for r in group):.1f}",
            ]
        )
    return rows


def main() -> None:
    from orchestrator.console import configure_console

    configure_console()  # the training loop logs its progress and validation tables
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=None, help="student epochs (default 12; full, oddetr: 16)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--suite",
        choices=[*SUITES, *FULL_SUITES],
        default="deformable",
        help="full / oddetr: the harder benchmark (bench/accuracy_full.py), about 2 h on 2 cores",
    )
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 16 if args.suite in FULL_SUITES else 12
    if args.suite in FULL_SUITES:
        full_suite(args)
        return
    students = SUITES[args.suite]
    from orchestrator.data.build import build_datasets
    from orchestrator.spec.loader import load_spec
    from orchestrator.spec.paths import resolve_paths

    common = [f"data.source.cache_dir={ROOT / 'data' / 'cache'}", "train.log_every=100000"]
    student = [
        *common,
        f"train.epochs={args.epochs}",
        f"train.eval_interval={args.epochs}",
        f"optim.step_epochs=[{max(1, args.epochs - args.epochs // 6)}]",
    ]
    teacher_overrides = [
        *common,
        f"train.epochs={args.teacher_epochs}",
        f"train.eval_interval={args.teacher_epochs}",
        f"optim.step_epochs=[{max(1, args.teacher_epochs - args.teacher_epochs // 6)}]",
    ]
    # the data once, here, so the pool processes never generate it concurrently
    build_datasets(resolve_paths(load_spec(ROOT / TEACHER, common), ROOT).data)
    started = time.perf_counter()
    context = get_context("spawn")
    with ProcessPoolExecutor(args.parallel, mp_context=context, initializer=one_thread) as pool:
        teacher_job = pool.submit(train, TEACHER, 0, teacher_overrides, str(WORK / "teacher"))
        jobs: dict[str, list] = {"baseline": [], "DETRDistill": [], "OD-DETR": []}
        for tag in ("baseline", "OD-DETR"):
            for seed in args.seeds:
                folder = str(WORK / args.suite / f"{tag}-s{seed}")
                jobs[tag].append(pool.submit(train, students[tag], seed, student, folder))
        teacher = teacher_job.result()
        print(f"teacher: {teacher['final']}", flush=True)
        distill = [*student, f"teacher.weights={teacher['model_file']}"]
        for seed in args.seeds:
            folder = str(WORK / args.suite / f"DETRDistill-s{seed}")
            jobs["DETRDistill"].append(
                pool.submit(train, students["DETRDistill"], seed, distill, folder)
            )
        runs = {"teacher": [teacher]}
        runs.update({tag: [job.result() for job in group] for tag, group in jobs.items()})
    minutes = (time.perf_counter() - started) / 60
    per_seed = [
        [
            tag,
            r["seed"],
            f"{r['final'].get('val/AP', float('nan')):.3f}",
            f"{r['final'].get('val/AP50', float('nan')):.3f}",
            f"{r['final']['val_ema/AP']:.3f}" if "val_ema/AP" in r["final"] else "-",
            f"{statistics.mean(r['instability']):.3f}" if r["instability"] else "-",
        ]
        for tag, group in runs.items()
        for r in group
    ]
    write_results(
        "accuracy" if args.suite == "deformable" else f"accuracy_{args.suite}",
        "Accuracy at an equal budget on the synthetic shapes",
        {**vars(args), "teacher": TEACHER, "students": students, "overrides": student},
        {
            f"Students: {args.epochs} epochs each, same data and seeds; teacher "
            f"{args.teacher_epochs} epochs (its own recipe, one seed). Final epoch, mean +- std "
            "over seeds:": (
                [
                    "model",
                    "runs",
                    "AP",
                    "AP50",
                    "EMA AP",
                    "EMA AP50",
                    "mean instability",
                    "GT flip rate",
                    "minutes per run",
                ],
                summary_rows(runs),
            ),
            "Per seed:": (["model", "seed", "AP", "AP50", "EMA AP", "mean instability"], per_seed),
        },
        targets=[
            target_row(
                f"{tag} student vs baseline AP, {len(args.seeds)} seeds, {args.epochs} epochs "
                "(no target: reported)",
                f"{mean_ap(runs[tag]):.3f} vs {mean_ap(runs['baseline']):.3f}",
                "reported",
            )
            for tag in ("DETRDistill", "OD-DETR")
        ],
        notes=[
            f"{sum(len(g) for g in runs.values())} runs in {minutes:.1f} min wall, {args.parallel} at a "
            "time, one thread each. Minutes per run are the training's own wall time (a "
            "DETRDistill or OD-DETR epoch costs more than a baseline epoch: see the step time)."
        ],
    )


def full_suite(args: argparse.Namespace) -> None:
    """The harder benchmark: every run (kept on disk), then the tables with intervals."""
    variants = FULL_SUITES[args.suite]
    started = time.perf_counter()
    teacher, runs = run_suite(variants, args.epochs, args.seeds, args.parallel)
    minutes = (time.perf_counter() - started) / 60
    report = build_tables(variants, teacher, runs)
    write_results(
        f"accuracy_{args.suite}",
        "Accuracy on the harder synthetic benchmark"
        + (" (OD-DETR study)" if args.suite == "oddetr" else ""),
        {
            "epochs": args.epochs,
            "seeds": args.seeds,
            "teacher_epochs": TEACHER_EPOCHS,
            "variants": {v.tag: [v.spec, *v.overrides] for v in variants},
        },
        report["tables"],
        targets=report["targets"],
        notes=[
            f"Data: bench/hard_data.py (8 classes, distractors, occlusion, textures, small "
            f"objects; 512 train / 512 validation images at 128 px). Students {args.epochs} "
            f"epochs, teacher {TEACHER_EPOCHS} (one seed). This call: {minutes:.0f} min wall, "
            f"{args.parallel} runs at a time, one thread each (stored runs are reused)."
        ],
    )


if __name__ == "__main__":
    main()
