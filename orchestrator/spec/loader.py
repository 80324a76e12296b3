"""Loading experiment specs: YAML, `--set` overrides, validation, and errors a person can act on.

`load_spec` reads a YAML file, applies overrides, validates with the models of `sections.py` and
turns every problem into one line: file, line, dotted field path and what was expected, e.g.
`experiments/x.yaml:12: optim.lr: must be greater than 0 (got -1)`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.spec.messages import describe, follow
from orchestrator.spec.overrides import Override, apply_override, parse_override
from orchestrator.spec.problems import Problem, SpecError
from orchestrator.spec.rules import cross_section_problems
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.spec.variables import expand_variables
from orchestrator.spec.yaml_source import PathParts, duplicate_keys, line_of, parse_yaml


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Read, override and validate a YAML spec; raise SpecError listing every problem."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(where, None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([Problem(where, None, "", f"cannot read the file: {err}")]) from None
    data, root = parse_yaml(text, where)
    data, unset = expand_variables(data)
    if unset:
        raise SpecError(
            [Problem(where, line_of(root, dotted_parts(path)), path, msg) for path, msg in unset]
        )
    return _validate(data, where, root, overrides)


def load_spec_dict(
    data: dict[str, Any], source: str | None = None, overrides: Sequence[str] = ()
) -> ExperimentSpec:
    """Validate a spec that is already a dict (Ray workers, Tune trials); `source` labels errors."""
    return _validate(data, source, None, overrides)


def _validate(
    data: Any, where: str | None, root: yaml.Node | None, overrides: Sequence[str]
) -> ExperimentSpec:
    if not isinstance(data, dict):
        got = "nothing" if data is None else f"a {type(data).__name__}"
        message = f"expected a mapping of sections (at least 'name' and 'student'), got {got}"
        raise SpecError([Problem(where, None, "", message)])
    parsed = [parse_override(text) for text in overrides]
    bad = [item for item in parsed if isinstance(item, Problem)]
    if bad:
        raise SpecError(bad)
    applied: list[Override] = [item for item in parsed if isinstance(item, Override)]
    data = copy.deepcopy(data)
    problems = [p for item in applied if (p := apply_override(data, item)) is not None]
    if problems:
        raise SpecError(problems)
    problems = duplicate_keys(root, where) if root is not None else []
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as err:
        for error in err.errors(include_url=False):
            located = follow(error["loc"], data, ExperimentSpec)
            path, message = describe(error, located)
            problems.append(_problem(path, message, where, root, applied))
        raise SpecError(problems) from None
    for dotted, message in cross_section_problems(spec):
        path = dotted_parts(dotted)
        problems.append(_problem(path, message, where, root, applied))
    if spec.tune is not None and not problems:
        for path, message in _tune_problems(spec):
            problems.append(_problem(path, message, where, root, applied))
    if problems:
        raise SpecError(problems)
    return spec


def _tune_problems(spec: ExperimentSpec) -> list[tuple[list[str], str]]:
    """The sweep's paths and values, each checked by validating the spec it would produce."""
    from orchestrator.spec.search_space import tune_problems

    def check(sample: dict) -> list[str]:
        try:
            _validate(sample, None, None, ())
        except SpecError as err:
            return [f"{p.path}: {p.message}" if p.path else p.message for p in err.problems]
        return []

    full = spec.model_dump(mode="json", exclude={"tune"})
    return tune_problems(full, spec.tune, spec.train.epochs, check)


def _problem(
    path: PathParts,
    message: str,
    where: str | None,
    root: yaml.Node | None,
    applied: list[Override],
) -> Problem:
    dotted = ".".join(str(part) for part in path)
    parts = tuple(str(part) for part in path)
    for override in reversed(applied):  # the last override of a path is the one that counts
        depth = min(len(parts), len(override.path))
        if parts and parts[:depth] == override.path[:depth]:  # inside it, or on its way
            return Problem(f"--set {override.text}", None, dotted, message)
    return Problem(where, line_of(root, path), dotted, message)


def dotted_parts(dotted: str) -> list[str | int]:
    """`a.0.b` as ["a", 0, "b"]."""
    return [int(p) if p.isdigit() else p for p in dotted.split(".")]
