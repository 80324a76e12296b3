"""The driver's Ray session and stop handling: `init_ray` (local or an existing cluster), and
SIGTERM / Ctrl-C closing this process's open MLflow runs as KILLED, so none stays RUNNING."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

logger = logging.getLogger("detrdistill")

# MLflow runs this process has open, so that a stop signal can close them
ACTIVE_RUNS: list[Any] = []
_handle_stop = False


def handle_stop_signals() -> None:
    """Treat SIGTERM (how `detrdistill jobs stop` ends a job) like Ctrl-C, closing this
    process's MLflow runs as KILLED at once, so they do not stay RUNNING forever. `ray.init`
    installs its own SIGTERM handler, so `init_ray` installs this one again after it."""
    global _handle_stop
    _handle_stop = True
    signal.signal(signal.SIGTERM, _on_stop_signal)


def _on_stop_signal(signum, frame) -> None:
    close_active_runs("KILLED")  # at once: the process may be killed before it unwinds
    raise KeyboardInterrupt(f"signal {signum}")


def close_active_runs(status: str) -> None:
    """Finish every open MLflow run of this process with `status`."""
    while ACTIVE_RUNS:
        try:
            ACTIVE_RUNS.pop().finish(status)
        except Exception as err:  # closing is best effort while being stopped
            logger.warning(f"could not close an MLflow run: {err}")


def init_ray(address: str | None) -> None:
    """Connect to `address` (or $RAY_ADDRESS inside a Ray Job), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray Job
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=True, log_to_driver=True)
    if _handle_stop:
        signal.signal(signal.SIGTERM, _on_stop_signal)
