"""`--set PATH=VALUE` overrides: parsed as YAML values and applied to the spec's data before
validation, creating mappings on the way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.spec.problems import Problem
from orchestrator.spec.yaml_source import SpecYamlLoader


@dataclass(frozen=True)
class Override:
    text: str
    path: tuple[str, ...]
    value: Any


def parse_override(text: str) -> Override | Problem:
    where = f"--set {text}"
    key, sep, raw = text.partition("=")
    parts = tuple(part.strip() for part in key.split("."))
    if not sep or not key.strip() or not all(parts):
        return Problem(
            where, None, "", "expected PATH=VALUE with a dotted path, e.g. optim.lr=1e-4"
        )
    try:
        value = yaml.load(raw, Loader=SpecYamlLoader) if raw.strip() else ""
    except yaml.YAMLError as err:
        return Problem(where, None, "", f"value is not valid YAML: {getattr(err, 'problem', err)}")
    return Override(text, parts, value)


def apply_override(data: dict[str, Any], override: Override) -> Problem | None:
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
        if child is None and override.path[depth + 1].isdigit():
            inner = ".".join(override.path[: depth + 1])
            message = (
                f"{inner} is not a list in this spec, so it has no item "
                f"{override.path[depth + 1]}; give the whole list, e.g. --set {inner}=[1, 2]"
            )
            return Problem(where, None, "", message)
        if child is None:
            child = container[key] = {}
        elif not isinstance(child, dict | list):
            inner = ".".join(override.path[: depth + 1])
            return Problem(
                where, None, "", f"cannot set inside {inner}: it is {child!r}, not a mapping"
            )
        container = child
    return None
