"""`${NAME}` and `${NAME:-default}` in spec strings come from the environment, so one variable
(e.g. COCO_ROOT) can place every dataset path of a recipe."""

from __future__ import annotations

import os
import re
from typing import Any

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_variables(data: Any, path: str = "") -> tuple[Any, list[tuple[str, str]]]:
    """A copy of `data` with variables expanded, and (dotted path, message) for unset ones."""
    problems: list[tuple[str, str]] = []
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], more = expand_variables(value, f"{path}.{key}" if path else str(key))
            problems += more
        return out, problems
    if isinstance(data, list):
        items = []
        for i, value in enumerate(data):
            item, more = expand_variables(value, f"{path}.{i}")
            items.append(item)
            problems += more
        return items, problems
    if not isinstance(data, str) or "${" not in data:
        return data, problems

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name, default)
        if value is None:
            problems.append(
                (
                    path,
                    f"environment variable {name} is not set; set it or write ${{{name}:-default}}",
                )
            )
            return match.group(0)
        return value

    return _VARIABLE.sub(replace, data), problems
