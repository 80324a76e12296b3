"""One live progress line for training: a bar redrawn in place where stdout is a terminal,
plain lines every `interval_s` seconds (and at the end) where it is a file or a pipe."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

_CLEAR = "\r\x1b[K"


def duration(seconds: float) -> str:
    """`1:02:03`, `4:05` or `12s`."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


def progress_text(info: dict[str, Any], width: int = 20) -> str:
    """The line for one progress report: `info` has run, epoch (1-based), epochs, iteration,
    total, loss, images_per_s, eta_s (this epoch) and run_eta_s (the whole run)."""
    done = info["iteration"] / max(1, info["total"])
    filled = round(done * width)
    bar = "#" * filled + "." * (width - filled)
    return (
        f"{info.get('run', 'train')}  epoch {info['epoch']}/{info['epochs']} [{bar}] "
        f"{info['iteration']}/{info['total']}  loss {info['loss']:.3f}  "
        f"{info['images_per_s']:.1f} img/s  epoch eta {duration(info['eta_s'])}  "
        f"run eta {duration(info['run_eta_s'])}"
    )


class ProgressLine:
    """The live line. `stream` and `tty` default to the current `sys.stdout` and whether it
    is a terminal, read at each call (tests and Ray swap stdout)."""

    def __init__(
        self, stream: TextIO | None = None, tty: bool | None = None, interval_s: float = 30.0
    ) -> None:
        self._stream = stream
        self._tty = tty
        self.interval_s = interval_s
        self._text = ""  # the line on screen (terminal mode), "" when none
        self._last_plain = float("-inf")

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def update(self, info: dict[str, Any]) -> None:
        text = progress_text(info)
        if self.tty:
            self._text = text
            self.redraw()
            return
        last = info["epoch"] == info["epochs"] and info["iteration"] == info["total"]
        now = time.monotonic()
        if last or now - self._last_plain >= self.interval_s:
            self._last_plain = now
            self.stream.write(text + "\n")
            self.stream.flush()

    def clear(self) -> None:
        """Take the live line off the screen (before another line is printed)."""
        if self._text and self.tty:
            self.stream.write(_CLEAR)
            self.stream.flush()

    def redraw(self) -> None:
        if self._text and self.tty:
            self.stream.write(_CLEAR + self._text)
            self.stream.flush()

    def close(self) -> None:
        """The run is over: the line goes, the next run starts a fresh one."""
        self.clear()
        self._text = ""
        self._last_plain = float("-inf")
