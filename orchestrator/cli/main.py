"""The `detrdistill` command line.

Bad input (a spec, a dataset, an argument) prints one clear message and exits with code 2;
no traceback, nothing started.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from orchestrator.errors import UserInputError

EXIT_BAD_INPUT = 2


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detrdistill", description="Distil DETR-family object detectors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="generate or check datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = data_commands.add_parser("synth", help="write the synthetic shapes COCO dataset")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--train", type=_non_negative, default=64, help="training images")
    synth.add_argument("--val", type=_non_negative, default=16, help="validation images")
    synth.add_argument("--image-size", type=_positive, default=128, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--classes", type=_positive, default=3, help="number of shape classes")
    synth.add_argument(
        "--max-objects", type=_positive, default=4, help="objects per image, at most"
    )
    synth.add_argument("--force", action="store_true", help="replace an existing output folder")
    synth.set_defaults(handler=_run_synth)

    check = data_commands.add_parser(
        "check",
        help="open a COCO dataset as training does and evaluate its ground truth",
        description="Verify every image and annotation, print counts, then feed the ground "
        "truth through the eval transform and the COCO evaluator (must give AP 1.0).",
    )
    check.add_argument("root", nargs="?", type=Path, help="dataset root written by 'data synth'")
    check.add_argument("--split", default="val", choices=("train", "val"))
    check.add_argument("--images", type=Path, help="image folder (instead of ROOT)")
    check.add_argument("--annotations", type=Path, help="annotation json (instead of ROOT)")
    check.add_argument("--size", type=_positive, default=800, help="eval resize, shorter side")
    check.add_argument("--max-size", type=_positive, default=1333, help="eval resize, longer side")
    check.add_argument("--draw-dir", type=Path, help="write a few images with their boxes here")
    check.set_defaults(handler=_run_check)

    from orchestrator.cli.spec_commands import add_spec_commands

    add_spec_commands(commands)

    from orchestrator.cli.run_commands import add_run_commands

    add_run_commands(commands)

    from orchestrator.cli.cluster_commands import add_cluster_commands

    add_cluster_commands(commands)
    return parser


def _run_synth(args: argparse.Namespace) -> int:
    from orchestrator.data.synth import generate_shapes

    try:
        out = generate_shapes(
            args.out,
            num_train=args.train,
            num_val=args.val,
            image_size=args.image_size,
            seed=args.seed,
            num_classes=args.classes,
            max_objects=args.max_objects,
            force=args.force,
        )
    except ValueError as err:  # bad generator parameters
        raise UserInputError(f"data synth: {err}") from None
    print(f"wrote synthetic shapes dataset to {out} ({args.train} train, {args.val} val images)")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from orchestrator.data.check import evaluate_ground_truth, open_for_check, summarize
    from orchestrator.evaluation.coco import format_metrics_table
    from orchestrator.data.synth import split_paths

    if args.root is not None and (args.images or args.annotations):
        raise UserInputError("data check: give either ROOT or --images/--annotations, not both")
    if args.root is not None:
        images, annotations = split_paths(args.root, args.split)
    elif args.images and args.annotations:
        images, annotations = args.images, args.annotations
    else:
        raise UserInputError("data check: give a dataset ROOT, or both --images and --annotations")
    dataset = open_for_check(images, annotations, args.size, args.max_size)
    print(f"dataset {annotations} ({images})")
    summary = summarize(dataset)
    print(summary.format())
    metrics = evaluate_ground_truth(dataset, draw_dir=args.draw_dir)
    print(format_metrics_table(metrics, title="ground truth through the eval pipeline"))
    if metrics["AP"] < 0.999 and summary.boxes > 0:
        print("warning: ground truth does not score AP 1.0; boxes are distorted on the way")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `detrdistill` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except (UserInputError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
