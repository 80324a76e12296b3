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
from orchestrator.data.build import build_datasets
from orchestrator.launch import worker
from orchestrator.spec.loader import load_spec
from orchestrator.spec.paths import resolve_paths
from orchestrator.training.fit import run_training
from orchestrator.training.reporters import LocalReporter

TARGET = 0.95


def timed_worker(config: dict) -> None:
    """`train_worker`, timed from inside the Ray worker, with the time of every report."""

    reports: list[float] = []
    report = worker.RayTrainReporter.report

    def timed_report(self, metrics, checkpoint_dir) -> None:
        report(self, metrics, checkpoint_dir)
        reports.append(time.perf_counter())

    worker.RayTrainReporter.report = timed_report
    start = time.perf_counter()
    worker.train_worker(config)
    Path(config["timing_file"]).write_text(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "reports": reports,
                "threads": torch.get_num_threads(),
            }
        )
    )


def steady_images_per_s(reports: list[float], images_per_epoch: int) -> float:
    """Images/s from the end of epoch 1 to the end of the last epoch before the final one: the
    epochs with their checkpoint and report, without start-up, warm-up epoch or the final
    evaluation."""
    if len(reports) < 3:
        raise ValueError("need at least 3 epochs for a steady-state rate")
    return images_per_epoch * (len(reports) - 2) / (reports[-2] - reports[0])


def run_ray(spec, storage: Path, key: str) -> dict:
    from orchestrator.launch.worker import build_trainer

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
        "reports": inner["reports"],
        "startup_s": wall - inner["seconds"],
        "threads": inner["threads"],
        "loop_images_per_s": result.metrics["train/images_per_s"],
    }


def run_plain(spec) -> dict:
    reports: list[float] = []

    class TimedReporter(LocalReporter):
        def report(self, metrics, checkpoint_dir) -> None:
            super().report(metrics, checkpoint_dir)
            reports.append(time.perf_counter())

    start = time.perf_counter()
    reporter = TimedReporter()
    run_training(spec, reporter)
    return {
        "train_s": time.perf_counter() - start,
        "reports": reports,
        "threads": torch.get_num_threads(),
        "loop_images_per_s": reporter.history[-1]["train/images_per_s"],
    }


def main() -> None:
    from orchestrator.console import configure_console

    configure_console()  # the training loop logs its progress and validation tables
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=None)
    parser.add_argument("--use-gpu", action="store_true", help="train on the GPU on both paths")
    args = parser.parse_args()
    overrides = [
        f"train.epochs={args.epochs}",
        f"train.eval_interval={args.epochs}",
        "train.log_every=1000",
        "data.source.val_images=8",
        "mlflow.register_as=null",
        f"data.source.cache_dir={ROOT / 'data' / 'cache'}",
    ]
    if args.use_gpu:
        overrides += ["scaling.use_gpu=true", "scaling.gpus_per_worker=1"]
    if args.cpus_per_worker:
        overrides.append(f"scaling.cpus_per_worker={args.cpus_per_worker}")
    spec = resolve_paths(load_spec(ROOT / "experiments/quickstart_student.yaml", overrides), ROOT)
    train_set, _ = build_datasets(spec.data)  # generate the data once, outside the timings
    # the same threads on both paths: Ray gives its worker cpus_per_worker threads
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    images = args.epochs * len(train_set)
    import ray

    from orchestrator.launch.session import init_ray

    start = time.perf_counter()
    init_ray(None)
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

    device = torch.cuda.get_device_name() if args.use_gpu else "CPU"
    per_epoch = len(train_set)
    plain_ips = statistics.median(steady_images_per_s(r["reports"], per_epoch) for r in plain)
    ray_ips = statistics.median(steady_images_per_s(r["reports"], per_epoch) for r in ray_runs)
    ratio = ray_ips / plain_ips
    rows = []
    for name, runs, steady in (
        ("plain engine (this process)", plain, plain_ips),
        ("Ray Train, 1 worker", ray_runs, ray_ips),
    ):
        startup = "-"
        if runs is ray_runs:
            startup = f"{median(runs, 'startup_s'):.1f} (+ ray.init {ray_init_s:.1f})"
        rows.append(
            [
                name,
                f"{steady:.1f}",
                f"{median(runs, 'loop_images_per_s'):.1f}",
                f"{images / median(runs, 'train_s'):.1f}",
                f"{median(runs, 'train_s'):.1f}",
                runs[0]["threads"],
                startup,
            ]
        )
    write_results(
        "orchestration_cuda" if args.use_gpu else "orchestration",
        f"Orchestration overhead: plain engine vs Ray Train (1 worker, {device})",
        {**vars(args), "images": images, "spec": "experiments/quickstart_student.yaml"},
        {
            f"{args.epochs} epochs x {len(train_set)} images, batch {spec.data.batch_size}, "
            f"median of {args.rounds} alternating rounds:": (
                [
                    "path",
                    "steady images/s",
                    "last epoch loop images/s",
                    "end-to-end images/s",
                    "run_training s",
                    "torch threads",
                    "start-up + shutdown s",
                ],
                rows,
            ),
            f"Target: Ray steady images/s >= {TARGET} x plain:": (
                ["ratio", "target"],
                [[f"{ratio:.3f}", verdict(ratio, TARGET, at_most=False)]],
            ),
        },
        targets=[
            target_row(
                f"Ray Train (1 worker) images/s >= {TARGET} x the plain engine, start-up "
                f"excluded, {device}",
                f"{ratio:.3f} (start-up + shutdown {median(ray_runs, 'startup_s'):.1f} s, "
                f"ray.init {ray_init_s:.1f} s)",
                verdict(ratio, TARGET, at_most=False),
            )
        ],
        notes=[
            "Steady images/s: from the end of epoch 1 to the end of the last epoch before the "
            "final one (each epoch: the steps, the stability probe, the checkpoint and the "
            "report; for Ray, reported through Ray Train), so start-up, the warm-up epoch and "
            "the final evaluation are out. Loop images/s: the step loop of the last epoch alone. "
            "End-to-end: images / the whole `run_training` (data, model, epochs, evaluation). "
            "Start-up + shutdown: `trainer.fit()` wall time minus the worker's `run_training`."
        ],
    )


if __name__ == "__main__":
    main()
