"""What the user sees: the library logs to the `detrdistill` logger (never bare prints);
`configure_console` (called by the CLI and by each Ray worker) shows it on stdout, plain
lines for information and `warning:` / `error:` prefixes for the rest."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "detrdistill"


class _StdoutHandler(logging.Handler):
    """Writes to whatever `sys.stdout` is at the time (tests and Ray swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


class _ConsoleFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def configure_console(verbose: bool = False) -> None:
    """Show the product's log on stdout (debug too when `verbose`); other libraries' logs
    only from warnings up (everything when `verbose`). Safe to call more than once."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_ConsoleFormat("%(message)s"))
        logger.addHandler(handler)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
