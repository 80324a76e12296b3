"""`detrdistill eval` and `predict`: a trained model (any model source) on data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from orchestrator.cli.args import dataset_paths, positive
from orchestrator.errors import UserInputError


def add_model_commands(commands: argparse._SubParsersAction) -> None:
    """Register eval/predict on the top-level subparsers."""
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
    predict.add_argument(
        "--json", type=Path, help="detections as JSON here (default OUT/predictions.json)"
    )
    predict.add_argument("--max-size", type=int, help="longest side cap (default: the model's)")
    predict.add_argument(
        "--top-k", type=positive, default=100, help="detections kept per image (default 100)"
    )
    predict.set_defaults(handler=_predict)
    add_import_command(commands)


def add_import_command(commands: argparse._SubParsersAction) -> None:
    """`detrdistill import SOURCE --out FILE`."""
    parser = commands.add_parser(
        "import",
        help="turn a pretrained Hugging Face DETR-family checkpoint into a model file",
        description="SOURCE is a local Hugging Face model folder (config.json + *.safetensors), "
        "hf:<org>/<name>[@revision] (e.g. hf:SenseTime/deformable-detr-with-box-refine), or an "
        "official DETR / Deformable DETR / Conditional DETR / DAB-DETR .pth release. "
        "The model file can be a spec's teacher.weights or student.weights.",
    )
    parser.add_argument("source", help="model folder or hf:<org>/<name>[@revision]")
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument(
        "--format",
        choices=(
            "auto",
            "hf",
            "detr",
            "deformable-detr",
            "conditional-detr",
            "dab-detr",
            "rtdetr-v2",
        ),
        default="auto",
        help="auto: a folder or hf:... is a Hugging Face model, a file an official .pth "
        "(detr: facebookresearch/detr, deformable-detr: fundamentalvision/Deformable-DETR, "
        "conditional-detr: Atten4Vis/ConditionalDETR, dab-detr: IDEA-Research/DAB-DETR, "
        "rtdetr-v2: lyuwenyu/RT-DETR's rtdetrv2_pytorch, EMA weights when the file has them); "
        "a named format is checked against the file",
    )
    parser.add_argument("--register", metavar="NAME", help="also register in MLflow as NAME")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI for --register (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)",
    )
    parser.add_argument(
        "--size",
        type=int,
        help="eval shortest side (default 800; RT-DETRv2: a 640 x 640 square, as it was trained)",
    )
    parser.add_argument("--max-size", type=int, help="eval longest side (default 1333)")
    parser.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    from orchestrator.launch.importer import import_checkpoint
    from orchestrator.spec.paths import name_problem

    if args.register:
        problem = name_problem(args.register, "--register name")
        if problem:
            raise UserInputError(problem)
    import_checkpoint(
        args.source,
        args.out,
        args.register,
        args.tracking_uri,
        args.size,
        args.max_size,
        args.format,
    )
    return 0


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="models:/<name>/<version>, models:/<name>@<alias>, runs:/<id>/<path>, a model file "
        "or an exported .onnx file (run by onnxruntime)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)",
    )
    parser.add_argument("--size", type=int, help="eval resize (default: the model's own)")


def _eval(args: argparse.Namespace) -> int:
    from orchestrator.launch.inference import evaluate_model

    images, annotations = dataset_paths(
        "eval", "--data ROOT", args.data, args.split, args.images, args.annotations
    )
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
        args.model,
        args.images,
        args.out,
        args.tracking_uri,
        args.size,
        args.threshold,
        args.json,
        args.max_size,
        args.top_k,
    )
    where = args.json or args.out / "predictions.json"
    print(f"wrote {len(written)} image(s) to {args.out} and their detections to {where}")
    return 0
