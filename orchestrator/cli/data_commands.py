"""`detrdistill data synth` (write the shapes dataset) and `data check` (open a COCO dataset
as training does and evaluate its ground truth)."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.cli.args import dataset_paths, non_negative, positive
from orchestrator.errors import UserInputError


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    """Register `data synth` and `data check` on the top-level subparsers."""
    data = commands.add_parser("data", help="generate or check datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = data_commands.add_parser("synth", help="write the synthetic shapes COCO dataset")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--train", type=non_negative, default=64, help="training images")
    synth.add_argument("--val", type=non_negative, default=16, help="validation images")
    synth.add_argument("--image-size", type=positive, default=128, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--classes", type=positive, default=3, help="number of shape classes")
    synth.add_argument("--max-objects", type=positive, default=4, help="objects per image, at most")
    synth.add_argument(
        "--distractors", type=non_negative, default=0, help="unannotated clutter per image, at most"
    )
    synth.add_argument(
        "--occlusion", type=float, default=0.0, help="chance an object may cover earlier ones"
    )
    synth.add_argument("--textured", action="store_true", help="textured backgrounds")
    synth.add_argument("--small-objects", action="store_true", help="add 2.5-7%%-of-side objects")
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
    check.add_argument("--size", type=positive, default=800, help="eval resize, shorter side")
    check.add_argument("--max-size", type=positive, default=1333, help="eval resize, longer side")
    check.add_argument("--draw-dir", type=Path, help="write a few images with their boxes here")
    check.set_defaults(handler=_run_check)


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
            distractors=args.distractors,
            occlusion=args.occlusion,
            textured=args.textured,
            small_objects=args.small_objects,
            force=args.force,
        )
    except ValueError as err:  # bad generator parameters
        raise UserInputError(f"data synth: {err}") from None
    print(f"wrote synthetic shapes dataset to {out} ({args.train} train, {args.val} val images)")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from orchestrator.evaluation.coco import format_metrics_table
    from orchestrator.evaluation.ground_truth import (
        evaluate_ground_truth,
        open_for_check,
        summarize,
    )

    images, annotations = dataset_paths(
        "data check", "a dataset ROOT", args.root, args.split, args.images, args.annotations
    )
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
