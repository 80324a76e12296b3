"""What is wrong with a spec: `Problem` (file, line, dotted field path, message) and
`SpecError`, which carries every problem found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.errors import UserInputError


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
