"""Pydantic validation errors as messages a person can act on: the dotted field path without
union tags, plain wording, the value given, and a did-you-mean for misspelt names."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Tag
from pydantic.fields import FieldInfo


@dataclass
class Located:
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


def _tagged(members: list[Any]) -> dict[str, Any]:
    """{tag: type} of union members written `Annotated[Model, Tag(tag)]`."""
    tags = {}
    for member in members:
        if typing.get_origin(member) is typing.Annotated:
            inner, *metadata = typing.get_args(member)
            tags.update({item.tag: inner for item in metadata if isinstance(item, Tag)})
    return tags if len(tags) == len(members) else {}


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def follow(loc: Sequence[str | int], data: Any, root: type[BaseModel]) -> Located:
    """Walk `root`'s types along an error loc, choosing union members by their tag."""
    path: list[str | int] = []
    owner: type[BaseModel] | None = None
    annotation: Any = root
    discriminator: str | None = None
    value, i = data, 0
    while True:
        members, inner = _unwrap(annotation)
        discriminator = inner or discriminator
        current = members[0] if len(members) == 1 else None
        tagged = _tagged(members)
        if tagged:  # a union chosen by a function (the teacher): pydantic adds the tag to loc
            step = loc[i] if i < len(loc) else None
            if not (isinstance(step, str) and step in tagged):
                return Located(path + list(loc[i:]), owner, None)
            annotation, i = tagged[step], i + 1
            continue
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
                return Located(path + list(loc[i:]), owner, (discriminator, list(by_tag)))
        if i >= len(loc):
            return Located(path, owner, None)
        step = loc[i]
        i += 1
        path.append(step)
        if _is_model(current):
            owner = current
            field = current.model_fields.get(step) if isinstance(step, str) else None
            if field is None:
                return Located(path + list(loc[i:]), owner, None)
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
            return Located(path + list(loc[i:]), None, None)


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


def describe(error: Any, located: Located) -> tuple[list[str | int], str]:
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
