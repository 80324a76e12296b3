"""Reading spec YAML: a safe loader that also reads `1e-4` as a float, parsing with errors
that carry the line, the line of a field path, and duplicate keys (which PyYAML hides)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml

from orchestrator.spec.problems import Problem, SpecError

PathParts = Sequence[str | int]


class SpecYamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 only knows `1.0e-4`)."""


SpecYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    loader = SpecYamlLoader(text)
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


def line_of(root: yaml.Node | None, path: PathParts) -> int | None:
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


def duplicate_keys(root: yaml.Node, where: str | None) -> list[Problem]:
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
