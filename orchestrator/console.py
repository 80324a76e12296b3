"""What the user sees: the library logs to the `detrdistill` logger (never bare prints);
`configure_console` (called by the CLI and by each Ray worker or Tune trial) shows it: plain
lines on stdout for information, `warning:` / `error:` lines on stderr for the rest. Other
libraries' logs show from warnings up (everything with -v)."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "detrdistill"


class _ConsoleHandler(logging.Handler):
    """Writes to whatever `sys.stdout` / `sys.stderr` are at the time (tests and Ray swap
    them): information to stdout, warnings and errors to stderr with their level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"{record.levelname.lower()}: {message}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(message + "\n")
                sys.stdout.flush()
        except Exception:
            self.handleError(record)


class _OthersHandler(logging.Handler):
    """Other libraries' records on the current `sys.stderr`; the product's are left out (its
    own handler shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(LOGGER_NAME) and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_console(verbose: bool = False) -> None:
    """Show the product's log (debug too when `verbose`) and other libraries' warnings (all
    their records when `verbose`). Safe to call more than once. The product's records still
    propagate to the root logger (pytest's caplog sees them); the root's own console handler
    leaves them out, so nothing is printed twice."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not any(isinstance(h, _OthersHandler) for h in root.handlers):
        handler = _OthersHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def is_verbose() -> bool:
    """True when the console shows debug records (workers inherit the driver's -v)."""
    return logging.getLogger(LOGGER_NAME).isEnabledFor(logging.DEBUG)
