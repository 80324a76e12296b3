"""What the user sees: the library logs to the `detrdistill` logger (never bare prints);
`configure_console` (called by the CLI and by each Ray worker or Tune trial) shows it: plain
lines on stdout for information, `warning:` / `error:` lines on stderr for the rest. Other
libraries' logs show from warnings up (everything with -v); Ray's and MLflow's chatter stays
in their own log files unless -v.

Inside a Ray worker (`relayed`), every line the product writes carries `MARK`, and training
progress travels as a `MARK`-ed JSON line: the driver's relay (`orchestrator.launch.relay`)
shows those lines once, without Ray's prefixes, turns progress into one live line, and leaves
Ray's own lines to its log files."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from orchestrator.progress_line import ProgressLine

LOGGER_NAME = "detrdistill"
MARK = "\x1f"  # starts every line a relayed worker writes (ASCII US; RS would split lines)
_LINE, _WARNING, _PROGRESS = "L", "W", "P"
# libraries whose information records are chatter on the console (shown with -v)
_CHATTY = ("mlflow", "ray", "alembic", "urllib3", "filelock")

_state: dict[str, Any] = {"relayed": False}
LIVE = ProgressLine()  # the driver's live progress line, cleared around every console line


class _ConsoleHandler(logging.Handler):
    """Writes to whatever `sys.stdout` / `sys.stderr` are at the time (tests and Ray swap
    them): information to stdout, warnings and errors to stderr with their level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            warning = record.levelno >= logging.WARNING
            if warning:
                message = f"{record.levelname.lower()}: {message}"
            if _state["relayed"]:
                kind = _WARNING if warning else _LINE
                sys.stdout.write("".join(f"{MARK}{kind}{line}\n" for line in message.split("\n")))
                sys.stdout.flush()
                return
            write_line(message, warning)
        except Exception:
            self.handleError(record)


def write_line(text: str, to_stderr: bool = False) -> None:
    """One console line (or several), with the live progress line kept below it."""
    LIVE.clear()
    stream = sys.stderr if to_stderr else sys.stdout
    stream.write(text + "\n")
    stream.flush()
    LIVE.redraw()


class _OthersHandler(logging.Handler):
    """Other libraries' records on the current `sys.stderr`; the product's are left out (its
    own handler shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(LOGGER_NAME) and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if _state["relayed"]:
                text = "\n".join(f"{MARK}{_WARNING}{line}" for line in text.split("\n"))
                sys.stdout.write(text + "\n")
            else:
                LIVE.clear()
                sys.stderr.write(text + "\n")
                LIVE.redraw()
        except Exception:
            self.handleError(record)


def configure_console(verbose: bool = False, relayed: bool = False) -> None:
    """Show the product's log (debug too when `verbose`) and other libraries' warnings (all
    their records when `verbose`). Safe to call more than once. `relayed`: this process is a
    Ray worker whose output the driver's relay shows (lines are marked, nothing is printed
    twice). The product's records still propagate to the root logger outside Ray workers
    (pytest's caplog sees them); the root's own console handler leaves them out."""
    _state["relayed"] = relayed
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    if relayed:  # Ray's worker logging prints what reaches the root logger a second time
        logger.propagate = False
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not any(isinstance(h, _OthersHandler) for h in root.handlers):
        handler = _OthersHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    quiet_libraries(verbose)


def quiet_libraries(verbose: bool) -> None:
    """Ray's, MLflow's and their helpers' information records off the console (all of
    them with -v). Call again after importing Ray, which sets its loggers' levels."""
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:  # MLflow's download bars
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def is_verbose() -> bool:
    """True when the console shows debug records (workers inherit the driver's -v)."""
    return logging.getLogger(LOGGER_NAME).isEnabledFor(logging.DEBUG)


def show_progress(info: dict[str, Any]) -> None:
    """Training progress (see `ProgressLine.update` for the keys): the live line here, or a
    marked line for the driver's relay inside a Ray worker."""
    if _state["relayed"]:
        sys.stdout.write(f"{MARK}{_PROGRESS}{json.dumps(info)}\n")
        sys.stdout.flush()
        return
    LIVE.update(info)


def relayed_line(line: str) -> tuple[str, Any] | None:
    """A line a relayed worker wrote, decoded: ("progress", info), ("warning", text) or
    ("line", text); None for a line that is not the product's (Ray's own, a library's print)."""
    if not line.startswith(MARK) or len(line) < 2:
        return None
    kind, body = line[1], line[2:]
    if kind == _PROGRESS:
        try:
            return "progress", json.loads(body)
        except ValueError:
            return None
    return ("warning" if kind == _WARNING else "line"), body
