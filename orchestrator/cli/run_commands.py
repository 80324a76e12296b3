"""`detrdistill run`, `sweep` and `compare`: training on Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.cli.args import add_override_option, add_ray_start_option, run_name


def add_run_commands(commands: argparse._SubParsersAction) -> None:
    """Register run/sweep/compare on the top-level subparsers."""
    run = commands.add_parser("run", help="train an experiment spec on Ray Train")
    _add_launch_args(run, "run")
    run.set_defaults(handler=_run)
    sweep = commands.add_parser(
        "sweep",
        help="Ray Tune sweep of an experiment over its 'tune' section",
        description="Trials are child MLflow runs of one parent run; the best trial's student "
        "is registered under mlflow.register_as. The same command continues an interrupted sweep.",
    )
    _add_launch_args(sweep, "sweep")
    sweep.set_defaults(handler=_sweep)
    _add_compare_command(commands)


def _add_launch_args(run: argparse.ArgumentParser, what: str) -> None:
    run.add_argument("spec", type=Path, help="experiment YAML")
    add_override_option(run)
    run.add_argument(
        "--run-name",
        type=run_name,
        default="default",
        help=f"names this {what}; the same name resumes, a new name starts fresh",
    )
    run.add_argument(
        "--restart", action="store_true", help=f"discard checkpoints of this {what} name"
    )
    run.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    add_ray_start_option(run)
    run.add_argument("--storage", type=Path, default=Path("runs"), help="Ray checkpoint storage")


def _add_compare_command(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare", help="teacher / baseline / distilled: train what is missing, print a table"
    )
    compare.add_argument("--teacher", type=Path, required=True, help="the teacher's spec")
    compare.add_argument("students", nargs="+", type=Path, help="student specs, run in order")
    add_override_option(compare, "a field of every student spec")
    compare.add_argument(
        "--retrain-teacher",
        action="store_true",
        help="train the teacher even if its registered model exists",
    )
    compare.add_argument(
        "--no-cost",
        action="store_true",
        help="skip measuring parameters, GFLOPs and CPU latency (ONNX export of each model)",
    )
    compare.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    add_ray_start_option(compare)
    compare.add_argument(
        "--storage", type=Path, default=Path("runs"), help="Ray checkpoint storage"
    )
    compare.set_defaults(handler=_compare)


def _run(args: argparse.Namespace) -> int:
    from orchestrator.launch.run import run_experiment
    from orchestrator.launch.session import handle_stop_signals, shutdown_local_ray
    from orchestrator.spec.loader import load_spec
    from orchestrator.spec.paths import resolve_paths

    spec = resolve_paths(load_spec(args.spec, args.overrides), Path.cwd())
    handle_stop_signals()
    run_experiment(spec, args.run_name, args.address, args.restart, args.storage)
    shutdown_local_ray(remove_session=True)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from orchestrator.launch.session import handle_stop_signals, shutdown_local_ray
    from orchestrator.launch.sweep import run_sweep
    from orchestrator.spec.loader import load_spec
    from orchestrator.spec.paths import resolve_paths

    spec = resolve_paths(load_spec(args.spec, args.overrides), Path.cwd())
    handle_stop_signals()
    result = run_sweep(spec, args.run_name, args.address, args.restart, args.storage)
    shutdown_local_ray(remove_session=True)
    return 0 if result.best is not None else 1


def _compare(args: argparse.Namespace) -> int:
    from orchestrator.launch.compare import run_comparison
    from orchestrator.launch.session import handle_stop_signals, shutdown_local_ray
    from orchestrator.spec.loader import load_spec
    from orchestrator.spec.paths import resolve_paths

    teacher = resolve_paths(load_spec(args.teacher), Path.cwd())
    students = [resolve_paths(load_spec(p, args.overrides), Path.cwd()) for p in args.students]
    handle_stop_signals()
    run_comparison(
        teacher, students, args.address, args.storage, args.retrain_teacher, not args.no_cost
    )
    shutdown_local_ray(remove_session=True)
    return 0
