"""The `detrdistill` command line.

Bad input (a spec, a dataset, an argument) prints one clear message and exits with code 2;
no traceback, nothing started.
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.cli.cluster_commands import add_cluster_commands
from orchestrator.cli.data_commands import add_data_commands
from orchestrator.cli.deploy_commands import add_deploy_commands
from orchestrator.cli.model_commands import add_model_commands
from orchestrator.cli.run_commands import add_run_commands
from orchestrator.cli.spec_commands import add_spec_commands
from orchestrator.console import configure_console
from orchestrator.errors import EXIT_BAD_INPUT, RunFailed, RunStopped, UserInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detrdistill", description="Distil DETR-family object detectors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_data_commands(commands)
    add_spec_commands(commands)
    add_run_commands(commands)
    add_model_commands(commands)
    add_deploy_commands(commands)
    add_cluster_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `detrdistill` console script."""
    args = build_parser().parse_args(argv)
    configure_console(args.verbose)
    if getattr(args, "ray_start_timeout", None):
        from orchestrator.launch.local_ray import TIMEOUT_ENV

        os.environ[TIMEOUT_ENV] = str(args.ray_start_timeout)  # read where Ray starts
    try:
        return args.handler(args)
    except (UserInputError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RunStopped as err:
        print(str(err), file=sys.stderr)
        return 128 + err.signum


if __name__ == "__main__":
    sys.exit(main())
