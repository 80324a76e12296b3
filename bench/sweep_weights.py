"""Does a sweep of DETRDistill's weights earn its keep? The product's own Ray Tune sweep (ASHA,
experiments/sweeps/detrdistill_weights.yaml) on the harder data, then the best weights against
the paper's defaults on held-out seeds.

    python -m bench.sweep_weights [--epochs 16] [--samples 8] [--seeds 0 1 2] [--parallel 2]

The sweep tunes on its own draw of the harder data (data seed 1: other train and validation
images, 256 of them for validation) with training seed 100, so neither the benchmark's validation images nor its seeds
choose the weights. The chosen weights (the best trial that ran every epoch) are then trained on
the benchmark (data seed 0) with seeds 0-2 and compared, seed by seed, with the DETRDistill
defaults of `--suite full` (stored runs are reused): bench/results/accuracy_sweep.*.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.accuracy_full import DETRDISTILL, FULL, TEACHER, TEACHER_EPOCHS, WORK, Variant, run_suite
from bench.accuracy_report import build_tables
from bench.common import ROOT, write_results
from bench.hard_data import HARD_DATA, recipe

SWEEP = "experiments/sweeps/detrdistill_weights.yaml"


def _sweep(args: argparse.Namespace, teacher_file: str) -> dict:
    from orchestrator.console import configure_console
    from orchestrator.launch.session import shutdown_local_ray
    from orchestrator.launch.sweep import run_sweep
    from orchestrator.spec.loader import load_spec
    from orchestrator.spec.paths import resolve_paths

    configure_console()
    folder = WORK / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    overrides = [
        *HARD_DATA,
        "data.source.seed=1",  # the tuning draw of the data
        *recipe(args.epochs),
        "data.source.val_images=256",  # evaluated every epoch: ASHA compares at its rungs
        "train.eval_interval=1",
        "seed=100",
        f"teacher.weights={teacher_file}",
        f"mlflow.tracking_uri=sqlite:///{folder / 'mlflow.db'}",
        "mlflow.register_as=null",
        f"tune.num_samples={args.samples}",
        f"tune.scheduler.grace_period={args.grace}",
        f"tune.scheduler.max_epochs={args.epochs}",
    ]
    spec = resolve_paths(load_spec(ROOT / SWEEP, overrides), ROOT)
    try:
        result = run_sweep(spec, "bench", storage_path=folder / "ray", restart=True)
    finally:
        shutdown_local_ray()  # the held-out runs need both cores
    done = [r for r in result.rows if r["status"] == "done" and r["last"] is not None]
    chosen = max(done, key=lambda r: r["last"]) if done else result.best
    if chosen is None:
        raise SystemExit("the sweep finished no trial; see its output above")
    return {"rows": result.rows, "chosen": chosen, "table": result.table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--grace", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    teacher_file = WORK / "teacher-s0" / "result.json"
    if not teacher_file.exists():
        raise SystemExit(
            f"{teacher_file}: no teacher yet; run `python -m bench.accuracy --suite full`"
        )
    sweep = _sweep(args, json.loads(teacher_file.read_text())["model_file"])
    sweep_minutes = (time.perf_counter() - started) / 60
    params = sweep["chosen"]["params"]
    defaults = next(v for v in FULL if v.tag == "DETRDistill")
    best = Variant(
        "DETRDistill, the sweep's weights",
        DETRDISTILL,
        tuple(f"{k}={v}" for k, v in sorted(params.items())),
        baseline="DETRDistill",
        needs_teacher=True,
        group="sweep",
    )
    variants = (FULL[0], defaults, best)
    teacher, runs = run_suite(variants, args.epochs, args.seeds, args.parallel)
    report = build_tables(variants, teacher, runs)
    trials = [
        [
            r["trial"],
            json.dumps(r["params"], sort_keys=True),
            r["epochs"],
            r["status"],
            "-" if r["last"] is None else f"{r['last']:.3f}",
        ]
        for r in sweep["rows"]
    ]
    write_results(
        "accuracy_sweep",
        "A sweep of DETRDistill's weights, checked on held-out seeds",
        {
            "epochs": args.epochs,
            "samples": args.samples,
            "grace": args.grace,
            "seeds": args.seeds,
            "sweep": SWEEP,
            "teacher": TEACHER,
            "teacher_epochs": TEACHER_EPOCHS,
            "chosen": params,
        },
        {
            f"The sweep (ASHA, grace {args.grace} epochs, reduction 2, {args.samples} trials, "
            "tuning data seed 1, training seed 100): val/AP on the tuning data": (
                ["trial", "params", "epochs", "status", "val/AP"],
                trials,
            ),
            **report["tables"],
        },
        targets=report["targets"][-1:],
        notes=[
            f"The sweep took {sweep_minutes:.0f} min on this machine; the held-out runs "
            "reuse the stored baseline and DETRDistill runs of --suite full."
        ],
    )


if __name__ == "__main__":
    main()
