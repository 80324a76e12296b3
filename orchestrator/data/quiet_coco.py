"""Silence pycocotools' progress prints.

`contextlib.redirect_stdout` swaps a process-wide object and is not reliable under Ray Train,
which runs the training function in a thread and tees stdout: pycocotools' lines leaked into
the logs. Shadowing `print` inside the two pycocotools modules is local to them and thread-safe.
"""

from __future__ import annotations

import pycocotools.coco
import pycocotools.cocoeval


def _no_print(*args: object, **kwargs: object) -> None:
    return None


pycocotools.coco.print = _no_print
pycocotools.cocoeval.print = _no_print
