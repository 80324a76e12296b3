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


MAX_EXPANDED_NODES = 100_000  # a real spec has a few hundred; aliases may not multiply that


def expanded_size(root: yaml.Node) -> int | None:
    """How many nodes the document has once every alias is expanded (shared nodes counted at
    each use), or None for a recursive alias. Memoised, so an alias bomb costs no more than
    its text."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int | None:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in on_path:
            return None
        on_path.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        total = 1
        for child in children:
            inner = size(child)
            if inner is None:
                return None
            total += inner
        on_path.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def parse_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """(data, root node) of a spec's text; SpecError for invalid YAML and for documents whose
    aliases expand beyond MAX_EXPANDED_NODES (or refer to themselves)."""
    loader = SpecYamlLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            count = expanded_size(root)
            if count is None or count > MAX_EXPANDED_NODES:
                shown = "refers to itself" if count is None else f"expands to {count:,} nodes"
                message = (
                    f"refused: the document {shown} through YAML aliases (at most "
                    f"{MAX_EXPANDED_NODES:,}); write the values out instead of nesting aliases"
                )
                raise SpecError([Problem(where, None, "", message)])
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
