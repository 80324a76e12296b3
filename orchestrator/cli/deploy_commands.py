"""`detrdistill export`: a trained model (any model source) as a checked ONNX file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from orchestrator.cli.args import positive
from orchestrator.errors import UserInputError


def add_deploy_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="export a trained model to ONNX, checked against PyTorch with onnxruntime",
        description="MODEL is models:/<name>/<version>, models:/<name>@<alias>, runs:/<id>/<path>, "
        "a model file or an imported checkpoint. The graph reads RGB float pixels in [0, 1] "
        "(the ImageNet normalisation is inside) and returns the last stage's logits and boxes, "
        "or with --postprocess the top-k scores, labels and pixel xyxy boxes. The file is "
        "written only when onnxruntime reproduces PyTorch within --tolerance.",
    )
    parser.add_argument("model", help="model source")
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument(
        "--size",
        type=positive,
        nargs=2,
        metavar=("H", "W"),
        help="static input size (default: the model's eval size, square)",
    )
    shape.add_argument("--dynamic", action="store_true", help="any height and width (96-4096)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=positive, default=1, help="static batch (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="any batch size (1-64)")
    parser.add_argument(
        "--opset", type=int, default=18, help="ONNX opset, 17 or later (default 18)"
    )
    parser.add_argument(
        "--postprocess", action="store_true", help="end in top-k scores / labels / pixel boxes"
    )
    parser.add_argument("--top-k", type=positive, default=100, help="detections kept (default 100)")
    parser.add_argument(
        "--check-images",
        type=Path,
        nargs="+",
        default=[],
        metavar="IMAGE",
        help="images for the parity check (default: a synthetic scene)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="max |difference| allowed between onnxruntime and PyTorch (probabilities, "
        "normalised boxes; default 1e-3), predictions paired as sets per image; up to 5%% of an "
        "image's predictions may exceed it (query selection with near-tied scores)",
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ and runs:/")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from orchestrator.deploy.onnx_export import ExportOptions, export_onnx
    from orchestrator.training.model_source import load_model

    if args.out.suffix.lower() != ".onnx":
        raise UserInputError(f"--out {args.out}: give a file name ending in .onnx")
    if args.out.is_dir():
        raise UserInputError(f"--out {args.out}: a folder; give a file name ending in .onnx")
    missing = [str(p) for p in args.check_images if not p.is_file()]
    if missing:
        raise UserInputError(f"--check-images: not found: {', '.join(missing)}")
    model, payload = load_model(args.model, tracking_uri=args.tracking_uri)
    extra = dict(payload.get("extra") or {})
    extra.setdefault("architecture", (payload.get("config") or {}).get("architecture", "model"))
    options = ExportOptions(
        size=tuple(args.size) if args.size else None,
        dynamic=args.dynamic,
        batch=args.batch,
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
        postprocess=args.postprocess,
        top_k=args.top_k,
        tolerance=args.tolerance,
        check_images=list(args.check_images),
    )
    report = export_onnx(model.eval(), extra, args.out, options)
    sizes = ", ".join("x".join(map(str, row["size"])) for row in report["checked"])
    print(
        f"wrote {args.out} ({report['megabytes']} MB, opset {report['opset']}); onnxruntime vs "
        f"PyTorch at {sizes}: max differences {json.dumps(report['max_diff'])} "
        f"(tolerance {report['tolerance']}; {report['swapped']:.1%} of an image's predictions "
        "beyond it)"
    )
    return 0
