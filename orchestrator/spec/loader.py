"""Loading experiment specs: YAML, `--set` overrides, validation, and errors a person can act on.

`load_spec` reads a YAML file, applies overrides, validates with the models of `spec.py` and turns
every problem into one line: file, line, dotted field path and what was expected, e.g.
`experiments/x.yaml:12: optim.lr: must be greater than 0 (got -1)`. `resolve_paths` makes a spec
safe to ship to Ray workers (they change directory); `spec_to_yaml` and `flatten_params` feed
MLflow.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from orchestrator.errors import UserInputError
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.spec.variables import expand_variables

MAX_PARAM_CHARS = 500  # MLflow rejects longer parameter values
PathParts = Sequence[str | int]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec.

    `file` says where it came from: a file path, `--set a.b=c` for an override, or a label such
    as a Tune trial; `line` is 1-based; `path` is the dotted field path ("" for the whole spec).
    """

    file: str | None
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file or ""
        if where and self.line is not None:
            where += f":{self.line}"
        return ": ".join(part for part in (where, self.path, self.message) if part)


class SpecError(UserInputError):
    """An invalid spec, with every problem found; `str()` gives one line per problem."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[type[SpecError], tuple[list[Problem]]]:
        # Ray pickles errors raised in workers; rebuild from the problems, not the message
        return SpecError, (self.problems,)


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 only knows `1.0e-4`)."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


# ----------------------------------------------------------------------------- loading
def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Read, override and validate a YAML spec; raise SpecError listing every problem."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(where, None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([Problem(where, None, "", f"cannot read the file: {err}")]) from None
    data, root = _parse_yaml(text, where)
    data, unset = expand_variables(data)
    if unset:
        raise SpecError(
            [Problem(where, _line_of(root, _parts(path)), path, msg) for path, msg in unset]
        )
    return _validate(data, where, root, overrides)


def load_spec_dict(
    data: dict[str, Any], source: str | None = None, overrides: Sequence[str] = ()
) -> ExperimentSpec:
    """Validate a spec that is already a dict (Ray workers, Tune trials); `source` labels errors."""
    return _validate(data, source, None, overrides)


def _parse_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    loader = _SpecLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        message = f"invalid YAML: {problem}"
        context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and context_mark is not None:  # e.g. where an unclosed bracket opened
            message += f" ({context} that starts at line {context_mark.line + 1})"
        elif context:
            message += f" ({context})"
        mark = mark or context_mark
        line = mark.line + 1 if mark is not None else None
        raise SpecError([Problem(where, line, "", message)]) from None
    finally:
        loader.dispose()
    return data, root


def _validate(
    data: Any, where: str | None, root: yaml.Node | None, overrides: Sequence[str]
) -> ExperimentSpec:
    if not isinstance(data, dict):
        got = "nothing" if data is None else f"a {type(data).__name__}"
        message = f"expected a mapping of sections (at least 'name' and 'student'), got {got}"
        raise SpecError([Problem(where, None, "", message)])
    parsed = [_parse_override(text) for text in overrides]
    bad = [item for item in parsed if isinstance(item, Problem)]
    if bad:
        raise SpecError(bad)
    applied: list[_Override] = [item for item in parsed if isinstance(item, _Override)]
    data = copy.deepcopy(data)
    problems = [p for item in applied if (p := _apply_override(data, item)) is not None]
    if problems:
        raise SpecError(problems)
    problems = _duplicate_keys(root, where) if root is not None else []
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as err:
        for error in err.errors(include_url=False):
            located = _follow(error["loc"], data)
            path, message = _describe(error, located)
            problems.append(_problem(path, message, where, root, applied))
        raise SpecError(problems) from None
    for dotted, message in spec.cross_field_problems():
        path = [int(part) if part.isdigit() else part for part in dotted.split(".")]
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
    applied: list[_Override],
) -> Problem:
    dotted = ".".join(str(part) for part in path)
    parts = tuple(str(part) for part in path)
    for override in reversed(applied):  # the last override of a path is the one that counts
        if parts[: len(override.path)] == override.path:
            return Problem(f"--set {override.text}", None, dotted, message)
    return Problem(where, _line_of(root, path), dotted, message)


def _line_of(root: yaml.Node | None, path: PathParts) -> int | None:
    """1-based line of the deepest YAML node along `path` (the parent when a field is missing)."""
    node, line = root, None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            # the last duplicate wins, as in the constructed data
            matches = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not matches:
                break
            key, node = matches[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _duplicate_keys(root: yaml.Node, where: str | None) -> list[Problem]:
    # PyYAML silently keeps the last of two equal keys; that is nearly always a mistake
    problems, seen = [], set()
    pending: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while pending:
        node, path = pending.pop(0)
        if id(node) in seen:  # aliases share nodes and may even be recursive
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending += [(item, (*path, str(i))) for i, item in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            continue
        first_line: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(getattr(key, "value", "")), key.start_mark.line + 1
            if name in first_line:
                message = f"duplicate key (first at line {first_line[name]}); remove one of them"
                problems.append(Problem(where, line, ".".join([*path, name]), message))
            first_line.setdefault(name, line)
            pending.append((value, (*path, name)))
    return problems


# ----------------------------------------------------------------------------- overrides
@dataclass(frozen=True)
class _Override:
    text: str
    path: tuple[str, ...]
    value: Any


def _parse_override(text: str) -> _Override | Problem:
    where = f"--set {text}"
    key, sep, raw = text.partition("=")
    parts = tuple(part.strip() for part in key.split("."))
    if not sep or not key.strip() or not all(parts):
        return Problem(
            where, None, "", "expected PATH=VALUE with a dotted path, e.g. optim.lr=1e-4"
        )
    try:
        value = yaml.load(raw, Loader=_SpecLoader) if raw.strip() else ""
    except yaml.YAMLError as err:
        return Problem(where, None, "", f"value is not valid YAML: {getattr(err, 'problem', err)}")
    return _Override(text, parts, value)


def _apply_override(data: dict[str, Any], override: _Override) -> Problem | None:
    """Set one value in place, creating mappings on the way; a Problem when the path cannot be."""
    container: Any = data  # a dict at the top, dicts and lists below
    where = f"--set {override.text}"
    for depth, part in enumerate(override.path):
        key: str | int = part
        if isinstance(container, list):
            if not part.isdigit() or int(part) > len(container):
                here = ".".join(override.path[:depth])
                message = f"{here} is a list of {len(container)}; '{part}' is not an index in it"
                return Problem(where, None, "", message)
            key = int(part)
            if key == len(container):  # one past the end appends
                container.append(None)
        if depth == len(override.path) - 1:
            container[key] = override.value
            return None
        child = container[key] if isinstance(container, list) else container.get(key)
        if child is None:
            child = container[key] = {}
        elif not isinstance(child, dict | list):
            inner = ".".join(override.path[: depth + 1])
            return Problem(
                where, None, "", f"cannot set inside {inner}: it is {child!r}, not a mapping"
            )
        container = child
    return None


# ----------------------------------------------------------------------------- error messages
@dataclass
class _Located:
    path: list[str | int]  # the pydantic loc without union tags
    owner: type[BaseModel] | None  # the model whose field the last path element names
    union: tuple[str, list[str]] | None  # (discriminator, tags) when the loc ends at a union


def _unwrap(annotation: Any) -> tuple[list[Any], str | None]:
    """The alternatives of a type (Annotated and None stripped) and its discriminator, if any."""
    discriminator = None
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *metadata = typing.get_args(annotation)
            for item in metadata:
                if isinstance(item, FieldInfo) and isinstance(item.discriminator, str):
                    discriminator = item.discriminator
        elif origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return members, discriminator
            annotation = members[0]
        else:
            return [annotation], discriminator


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _follow(loc: Sequence[str | int], data: Any) -> _Located:
    """Walk ExperimentSpec's types along an error loc, choosing union members by their tag."""
    path: list[str | int] = []
    owner: type[BaseModel] | None = None
    annotation: Any = ExperimentSpec
    discriminator: str | None = None
    value, i = data, 0
    while True:
        members, inner = _unwrap(annotation)
        discriminator = inner or discriminator
        current = members[0] if len(members) == 1 else None
        models = [member for member in members if _is_model(member)]
        if models and discriminator:
            by_tag = {
                tag: model
                for model in models
                for tag in typing.get_args(model.model_fields[discriminator].annotation)
            }
            step = loc[i] if i < len(loc) else None
            tag = value.get(discriminator) if isinstance(value, dict) else None
            # pydantic puts the chosen tag into the loc; it is no key of the YAML mapping
            if (
                isinstance(step, str)
                and step in by_tag
                and not (isinstance(value, dict) and step in value)
            ):
                current, i = by_tag[step], i + 1
            elif isinstance(tag, str) and tag in by_tag:
                current = by_tag[tag]
            else:
                return _Located(path + list(loc[i:]), owner, (discriminator, list(by_tag)))
        if i >= len(loc):
            return _Located(path, owner, None)
        step = loc[i]
        i += 1
        path.append(step)
        if _is_model(current):
            owner = current
            field = current.model_fields.get(step) if isinstance(step, str) else None
            if field is None:
                return _Located(path + list(loc[i:]), owner, None)
            annotation = field.annotation
            discriminator = field.discriminator if isinstance(field.discriminator, str) else None
            value = value.get(step) if isinstance(value, dict) else None
            continue
        owner, discriminator = None, None
        origin, args = typing.get_origin(current), typing.get_args(current)
        if origin in (list, tuple) and args and isinstance(step, int):
            fixed = origin is tuple and Ellipsis not in args and step < len(args)
            annotation = args[step] if fixed else args[0]
            in_range = isinstance(value, list) and 0 <= step < len(value)
            value = value[step] if in_range else None
        elif origin is dict and len(args) == 2:
            annotation = args[1]
            value = value.get(step) if isinstance(value, dict) else None
        else:
            return _Located(path + list(loc[i:]), None, None)


_PLAIN = {
    "missing": "required field is missing",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}
_BOUNDS = {
    "greater_than": ("gt", "must be greater than {}"),
    "greater_than_equal": ("ge", "must be at least {}"),
    "less_than": ("lt", "must be less than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "too_short": ("min_length", "must have at least {} item(s)"),
    "too_long": ("max_length", "must have at most {} item(s)"),
    "string_too_short": ("min_length", "must have at least {} character(s)"),
    "string_too_long": ("max_length", "must have at most {} character(s)"),
}
_PATTERNS = {
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*$": "must start with a letter or digit and contain only "
    "letters, digits, '_', '.' and '-'",
}
_NO_INPUT = {"missing", "value_error", "assertion_error"}


def _describe(error: Any, located: _Located) -> tuple[list[str | int], str]:
    """(path, plain message) for one pydantic error."""
    kind, ctx, path = error["type"], error.get("ctx") or {}, located.path
    value = error.get("input")
    if kind == "extra_forbidden":
        allowed = list(located.owner.model_fields) if located.owner else []
        close = _did_you_mean(str(path[-1]), allowed)
        hint = f"; did you mean {close}?" if close else f"; allowed: {', '.join(allowed)}"
        return path, f"unknown field{hint if allowed else ''}"
    if kind.startswith("union_tag") and located.union is not None:
        discriminator, tags = located.union
        expected = f"expected one of {', '.join(tags)}"
        if kind == "union_tag_not_found":
            return [*path, discriminator], f"required field is missing; {expected}"
        tag = str(ctx.get("tag"))
        hint = _did_you_mean(tag, tags)
        hint = f" (did you mean {hint}?)" if hint else ""
        return [*path, discriminator], f"unknown {discriminator} {tag!r}; {expected}{hint}"
    hint = ""
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        message = f"must be one of {', '.join(choices) if choices else ctx.get('expected')}"
        hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
    elif kind in _BOUNDS:
        key, template = _BOUNDS[kind]
        message = template.format(_number(ctx.get(key)))
    elif kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        message = _PATTERNS.get(pattern, f"must match the pattern {pattern}")
    else:
        message = _PLAIN.get(kind) or error["msg"][:1].lower() + error["msg"][1:]
    if kind not in _NO_INPUT:
        message += f" (got {_shown(value)})"
    return path, message + (f"; did you mean {hint}?" if hint else "")


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """The closest candidate, quoted, or "" (case-insensitive: `c5` suggests `C5`)."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.7)
    return repr(by_lower[close[0]]) if close else ""


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _shown(value: Any) -> str:
    """A short YAML-flavoured rendering of a user's value for messages."""
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- using a spec
def resolve_paths(spec: ExperimentSpec, base_dir: str | Path) -> ExperimentSpec:
    """A copy with every filesystem path absolute (relative to base_dir) and MLflow defaults set.

    Ray workers and Tune trials change directory, so the driver resolves paths once. URIs
    (`models:/`, `runs:/`, `s3://`...) and absolute paths are left alone. A missing tracking URI
    becomes $MLFLOW_TRACKING_URI when set, else `sqlite:///<base_dir>/mlflow.db`; a missing MLflow
    experiment becomes the spec name.
    """
    base = Path(os.path.abspath(base_dir))
    resolved = spec.model_copy(deep=True)
    source = resolved.data.source
    if source.kind == "synthetic":
        source.cache_dir = _absolute(source.cache_dir, base)
    else:
        for name in ("train_images", "train_annotations", "val_images", "val_annotations"):
            setattr(source, name, _absolute(getattr(source, name), base))
    models = [resolved.student] + ([resolved.teacher.model] if resolved.teacher else [])
    for model in models:
        if model.backbone_weights is not None:
            model.backbone_weights = _absolute(model.backbone_weights, base)
    if resolved.teacher is not None and not _is_uri(resolved.teacher.weights):
        resolved.teacher.weights = _absolute(resolved.teacher.weights, base)
    uri = resolved.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    resolved.mlflow.tracking_uri = _absolute_tracking_uri(uri or "sqlite:///mlflow.db", base)
    resolved.mlflow.experiment = resolved.mlflow.experiment or resolved.name
    return resolved


def _is_uri(text: str) -> bool:
    # two letters at least, so that a Windows drive (C:\...) is not a scheme
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text) is not None


def _absolute(path: str, base: Path) -> str:
    return os.path.normpath(base / Path(path).expanduser())


def _absolute_tracking_uri(uri: str, base: Path) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        database = uri[len(prefix) :]
        # sqlite:////abs.db is absolute already; :memory: is no file
        if database and not database.startswith("/") and database != ":memory:":
            return prefix + _absolute(database, base)
        return uri
    return uri if _is_uri(uri) else _absolute(uri, base)


def spec_to_yaml(spec: ExperimentSpec) -> str:
    """The full spec, defaults included, as YAML (the MLflow artifact; loads back equal)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def flatten_params(spec: ExperimentSpec) -> dict[str, str]:
    """Dotted keys to string values for MLflow params; lists compact, values cut to 500 chars."""
    flat: dict[str, str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
            return
        if isinstance(value, list | dict):
            text = json.dumps(value, separators=(",", ":"), default=str)
        else:
            text = str(value)
        flat[prefix] = text[:MAX_PARAM_CHARS]

    visit("", spec.model_dump(mode="json"))
    return flat


def _parts(dotted: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in dotted.split(".")]
