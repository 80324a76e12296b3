"""Argument types and options shared by the command groups."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.errors import UserInputError


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def run_name(text: str) -> str:
    """An argparse type: a run name that is safe as a folder name and an MLflow tag."""
    from orchestrator.spec.paths import name_problem

    problem = name_problem(text, "run name")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_ray_start_option(parser: argparse.ArgumentParser) -> None:
    """`--ray-start-timeout SECONDS`: how long a local Ray may take to start."""
    parser.add_argument(
        "--ray-start-timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long a local Ray may take to start on a busy machine "
        "(default 120, or $DETRDISTILL_RAY_START_TIMEOUT)",
    )


def seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def add_override_option(parser: argparse.ArgumentParser, what: str = "a spec field") -> None:
    """The repeatable `--set a.b.c=value` option (value read as YAML), for every spec command."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help=f"override {what} by its dotted path, e.g. --set optim.lr=1e-4 "
        "--set train.epochs=2 --set data.crop_resize=[400,500] (repeatable; VALUE is read as YAML)",
    )


def dataset_paths(
    command: str,
    root_label: str,
    root: Path | None,
    split: str,
    images: Path | None,
    annotations: Path | None,
) -> tuple[Path, Path]:
    """(image folder, annotation json) from a dataset root written by `data synth` (given as
    `root_label`, e.g. "ROOT" or "--data ROOT"), or from explicit --images/--annotations;
    exactly one of the two ways."""
    from orchestrator.data.synth import split_paths

    if root is not None and (images or annotations):
        raise UserInputError(
            f"{command}: give either {root_label} or --images/--annotations, not both"
        )
    if root is not None:
        return split_paths(root, split)
    if images and annotations:
        return images, annotations
    raise UserInputError(f"{command}: give {root_label}, or both --images and --annotations")
