"""The driver's view of its Ray workers' output: the product's own lines once, without Ray's
`(RayTrainWorker pid=...)` prefixes, training progress as the one live line, and Ray's own
lines (controller notes, checkpoint notes, core-worker logs) left to Ray's log files unless
-v. It replaces Ray's handler of forwarded worker output (`ray_print_logs`)."""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.console import LIVE, relayed_line, write_line

logger = logging.getLogger("detrdistill")
_RAY_HANDLER = "ray_print_logs"
_OURS = "detrdistill_relay"


def relay_handler(verbose: bool, progress: bool, ray_print: Any = None):
    """The handler of one batch of forwarded output (`data` as Ray's log monitor publishes
    it: lines, pid, is_err, actor or task name). `progress`: show the workers' progress as
    the live line (a training run) or drop it (a sweep, whose trials would fight over it).
    `ray_print` shows a line of Ray's own when `verbose` (Ray's printer, prefix and all)."""

    def handle(data: dict[str, Any]) -> None:
        foreign = []
        for line in data.get("lines", []):
            decoded = relayed_line(line)
            if decoded is None:
                foreign.append(line)
            elif decoded[0] == "progress":
                if progress:
                    LIVE.update(decoded[1])
            else:
                write_line(decoded[1], to_stderr=decoded[0] == "warning")
        if foreign and verbose and ray_print is not None:
            LIVE.clear()
            ray_print(dict(data, lines=foreign))
            LIVE.redraw()

    return handle


def install_relay(verbose: bool, progress: bool = True) -> bool:
    """Put the relay in place of Ray's printer of worker output in this (driver) process;
    False (and Ray's printer stays) where this Ray has no such printer."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return False
    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    handlers = dict(getattr(dispatcher, "handlers", None) or [])  # [(name, handler)]
    if dispatcher is None or not hasattr(dispatcher, "remove_handler"):
        logger.debug("this Ray has no worker-output dispatcher: its printer stays")
        return False
    previous = handlers.get(_OURS)
    ray_print = getattr(previous, "original", None) or handlers.get(_RAY_HANDLER)
    dispatcher.remove_handler(_RAY_HANDLER)
    dispatcher.remove_handler(_OURS)
    handler = relay_handler(verbose, progress, ray_print)
    handler.original = ray_print
    dispatcher.add_handler(_OURS, handler)
    return True
