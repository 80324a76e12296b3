"""`detrdistill validate` (check specs, start nothing) and `detrdistill schema` (for editors)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.cli.args import add_override_option
from orchestrator.errors import EXIT_BAD_INPUT
from orchestrator.spec.loader import load_spec
from orchestrator.spec.problems import SpecError
from orchestrator.spec.sections import ExperimentSpec


def add_spec_commands(commands: argparse._SubParsersAction) -> None:
    """Register the spec subcommands on the top-level subparsers."""
    validate = commands.add_parser(
        "validate",
        help="check experiment specs without running anything",
        description="Load each spec as a run would and report every problem: file, line, field "
        "path and what was expected. Exit code 2 when any spec is invalid.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="spec YAML files")
    add_override_option(validate)
    validate.set_defaults(handler=_run_validate)

    schema = commands.add_parser(
        "schema",
        help="print the JSON schema of experiment specs",
        description="The JSON schema of ExperimentSpec, for editor completion: point a YAML at it "
        "with a first line '# yaml-language-server: $schema=./schema.json'.",
    )
    schema.add_argument("--out", type=Path, help="write to this file instead of printing")
    schema.set_defaults(handler=_run_schema)


def schema_json() -> str:
    """ExperimentSpec's JSON schema as indented JSON text with a final newline."""
    return json.dumps(ExperimentSpec.model_json_schema(), indent=2) + "\n"


def _run_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            spec = load_spec(path, args.overrides)
        except SpecError as err:
            failed += 1
            for problem in err.problems:
                print(f"error: {problem}", file=sys.stderr)
            continue
        summary = f"{spec.name}: {spec.student.architecture} student, method {spec.distill.method}"
        print(f"ok  {path}  ({summary})")
    if failed and len(args.files) > 1:
        print(f"{failed} of {len(args.files)} specs are invalid", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _run_schema(args: argparse.Namespace) -> int:
    text = schema_json()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote the spec schema to {args.out}")
    return 0
