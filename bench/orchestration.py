"""What Ray Train costs on top of the plain training loop.

    python -m bench.orchestration [--epochs 4] [--rounds 2]

The same tiny training (experiments/quickstart_student.yaml, fixed epochs, no MLflow) runs
through the plain engine in this process and through a Ray Train TorchTrainer with one worker
on a local Ray cluster, `--rounds` times, alternating. Both time `run_training` the same way
(inside the worker for Ray), so the images/s ratio excludes start-up; start-up (ray.init, and
the trainer's worker start + shutdown around the training function) is reported separately.
Target: Ray images/s >= 0.95 x plain images/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import ROOT, target_row, verdict, write_results
from bench.local_training import train_local
from orchestrator.data_build import build_datasets
from orchestrator.spec_loader import load_spec, resolve_paths
from orchestrator.train import train_worker

TARGET = 0.95


def timed_worker(config: dict) -> None:
    """`train_worker`, timed from inside the Ray worker."""
    start = time.perf_counter()
    train_worker(config)
    Path(config["timing_file"]).write_text(
        json.dumps({"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()})
    )


def run_ray(spec, storage: Path, key: str) -> dict:
    from orchestrator.run import build_trainer

    timing = storage / f"{key}.json"
    trainer = build_trainer(
        spec,
        key,
        storage,
        {"mlflow_run_id": None, "tracking_uri": None, "timing_file": str(timing)},
        worker=timed_worker,
    )
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start
    inner = json.loads(timing.read_text())
    return {
        "train_s": inner["seconds"],
        "startup_s": wall - inner["seconds"],
        "threads": inner["threads"],
        "loop_images_per_s": result.metrics["train/images_per_s"],
    }


def run_plain(spec) -> dict:
    start = time.perf_counter()
    reporter = train_local(spec)
    return {
        "train_s": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "loop_images_per_s": reporter.history[-1]["train/images_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=None)
    args = parser.parse_args()
    overrides = [
        f"train.epochs={args.epochs}",
        f"train.eval_interval={args.epochs}",
        "train.log_every=1000",
        "data.source.val_images=8",
        "mlflow.register_as=null",
        f"data.source.cache_dir={ROOT / 'data' / 'cache'}",
    ]
    if args.cpus_per_worker:
        overrides.append(f"scaling.cpus_per_worker={args.cpus_per_worker}")
    spec = resolve_paths(load_spec(ROOT / "experiments/quickstart_student.yaml", overrides), ROOT)
    train_set, _ = build_datasets(spec.data)  # generate the data once, outside the timings
    images = args.epochs * len(train_set)
    import ray

    from orchestrator.run import _init_ray

    start = time.perf_counter()
    _init_ray(None)
    ray_init_s = time.perf_counter() - start
    plain, ray_runs = [], []
    with tempfile.TemporaryDirectory() as storage:
        for round_ in range(args.rounds):
            plain.append(run_plain(spec))
            ray_runs.append(run_ray(spec, Path(storage), f"orchestration-{round_}"))
            print(f"round {round_}: plain {plain[-1]}, ray {ray_runs[-1]}", flush=True)
    ray.shutdown()

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    plain_ips = images / median(plain, "train_s")
    ray_ips = images / median(ray_runs, "train_s")
    ratio = ray_ips / plain_ips
    rows = [
        [
            "plain engine (this process)",
            f"{median(plain, 'train_s'):.1f}",
            f"{plain_ips:.1f}",
            f"{median(plain, 'loop_images_per_s'):.1f}",
            plain[0]["threads"],
            "-",
        ],
        [
            "Ray Train, 1 worker",
            f"{median(ray_runs, 'train_s'):.1f}",
            f"{ray_ips:.1f}",
            f"{median(ray_runs, 'loop_images_per_s'):.1f}",
            ray_runs[0]["threads"],
            f"{median(ray_runs, 'startup_s'):.1f} (+ ray.init {ray_init_s:.1f})",
        ],
    ]
    write_results(
        "orchestration",
        "Orchestration overhead: plain engine vs Ray Train (1 worker)",
        {**vars(args), "images": images, "spec": "experiments/quickstart_student.yaml"},
        {
            f"{args.epochs} epochs x {len(train_set)} images, batch {spec.data.batch_size}, "
            f"median of {args.rounds} alternating rounds:": (
                [
                    "path",
                    "training s",
                    "images/s",
                    "last epoch loop images/s",
                    "torch threads",
                    "start-up + shutdown s",
                ],
                rows,
            ),
            f"Target: Ray images/s >= {TARGET} x plain:": (
                ["ratio", "target"],
                [[f"{ratio:.3f}", verdict(ratio, TARGET, at_most=False)]],
            ),
        },
        targets=[
            target_row(
                f"Ray Train (1 worker) images/s >= {TARGET} x the plain engine, start-up excluded",
                f"{ratio:.3f} (start-up + shutdown {median(ray_runs, 'startup_s'):.1f} s, "
                f"ray.init {ray_init_s:.1f} s)",
                verdict(ratio, TARGET, at_most=False),
            )
        ],
        notes=[
            "Training seconds time `run_training` (data, model, the epochs, checkpoints, the "
            "final evaluation) identically on both paths, in the worker for Ray; images/s = "
            "images trained / training seconds."
        ],
    )


if __name__ == "__main__":
    main()
