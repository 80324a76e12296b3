"""Argument types and options shared by the command groups."""

from __future__ import annotations

import argparse


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


def add_override_option(parser: argparse.ArgumentParser, what: str = "a spec field") -> None:
    """The repeatable `--set a.b.c=value` option (value read as YAML), for every spec command."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help=f"override {what} by its dotted path, e.g. --set optim.lr=1e-4 "
        "--set train.loss.stage_weights.0=2 (repeatable; VALUE is read as YAML)",
    )
