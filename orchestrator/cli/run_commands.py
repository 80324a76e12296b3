"""`detrdistill run`, `eval` and `predict`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from orchestrator.errors import UserInputError
from orchestrator.cli.spec_commands import add_override_option


def add_run_commands(commands) -> None:
    """Register run/eval/predict on the top-level subparsers."""
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
    _add_other_commands(commands)


def _add_launch_args(run: argparse.ArgumentParser, what: str) -> None:
    run.add_argument("spec", type=Path, help="experiment YAML")
    add_override_option(run)
    run.add_argument(
        "--run-name",
        default="default",
        help=f"names this {what}; the same name resumes, a new name starts fresh",
    )
    run.add_argument(
        "--restart", action="store_true", help=f"discard checkpoints of this {what} name"
    )
    run.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    run.add_argument("--storage", type=Path, default=Path("runs"), help="Ray checkpoint storage")


def _add_other_commands(commands) -> None:

    compare = commands.add_parser(
        "compare", help="teacher / baseline / distilled: train what is missing, print a table"
    )
    compare.add_argument("--teacher", type=Path, required=True, help="the teacher's spec")
    compare.add_argument("students", nargs="+", type=Path, help="student specs, run in order")
    compare.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field of every student spec (e.g. seed=1)",
    )
    compare.add_argument(
        "--retrain-teacher",
        action="store_true",
        help="train the teacher even if its registered model exists",
    )
    compare.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    compare.add_argument(
        "--storage", type=Path, default=Path("runs"), help="Ray checkpoint storage"
    )
    compare.set_defaults(handler=_compare)

    evaluate = commands.add_parser("eval", help="COCO-evaluate a trained model on a dataset")
    _add_model_args(evaluate)
    evaluate.add_argument("--data", type=Path, help="dataset root written by 'data synth'")
    evaluate.add_argument("--split", default="val", choices=("train", "val"))
    evaluate.add_argument("--images", type=Path, help="image folder (instead of --data)")
    evaluate.add_argument("--annotations", type=Path, help="annotation json (instead of --data)")
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument("--results", type=Path, help="write COCO results json here")
    evaluate.set_defaults(handler=_eval)

    predict = commands.add_parser("predict", help="draw a model's detections on images")
    _add_model_args(predict)
    predict.add_argument("images", nargs="+", type=Path, help="image files")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--threshold", type=float, default=0.3, help="score threshold for drawing")
    predict.set_defaults(handler=_predict)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="models:/<name>/<version>, models:/<name>@<alias>, runs:/<id>/<path> or a file",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)",
    )
    parser.add_argument("--size", type=int, help="eval resize (default: the model's own)")


def _run(args: argparse.Namespace) -> int:
    from orchestrator.launch.run import handle_stop_signals, run_experiment
    from orchestrator.spec.loader import load_spec, resolve_paths

    spec = resolve_paths(load_spec(args.spec, args.overrides), Path.cwd())
    handle_stop_signals()
    run_experiment(spec, args.run_name, args.address, args.restart, args.storage)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from orchestrator.launch.run import handle_stop_signals
    from orchestrator.spec.loader import load_spec, resolve_paths
    from orchestrator.launch.sweep import run_sweep

    spec = resolve_paths(load_spec(args.spec, args.overrides), Path.cwd())
    handle_stop_signals()
    result = run_sweep(spec, args.run_name, args.address, args.restart, args.storage)
    return 0 if result.best is not None else 1


def _compare(args: argparse.Namespace) -> int:
    from orchestrator.launch.compare import run_comparison
    from orchestrator.spec.loader import load_spec, resolve_paths

    teacher = resolve_paths(load_spec(args.teacher), Path.cwd())
    students = [resolve_paths(load_spec(p, args.overrides), Path.cwd()) for p in args.students]
    run_comparison(teacher, students, args.address, args.storage, args.retrain_teacher)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from orchestrator.launch.inference import evaluate_model

    if args.data is not None:
        from orchestrator.data.synth import split_paths

        images, annotations = split_paths(args.data, args.split)
    elif args.images and args.annotations:
        images, annotations = args.images, args.annotations
    else:
        raise UserInputError("eval: give --data ROOT, or both --images and --annotations")
    metrics = evaluate_model(
        args.model, images, annotations, args.tracking_uri, args.size, args.batch_size, args.results
    )
    print(json.dumps(metrics))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from orchestrator.launch.inference import predict_images

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise UserInputError(f"predict: image file(s) not found: {', '.join(missing)}")
    written = predict_images(
        args.model, args.images, args.out, args.tracking_uri, args.size, args.threshold
    )
    print(f"wrote {len(written)} image(s) and predictions.json to {args.out}")
    return 0
