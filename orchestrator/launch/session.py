"""The driver's Ray session and stop handling: `init_ray` (local or an existing cluster), and
SIGTERM / Ctrl-C closing this process's open MLflow runs as KILLED, so none stays RUNNING."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from typing import Any

from orchestrator.console import is_verbose
from orchestrator.errors import RunFailed, RunStopped, UserInputError
from orchestrator.launch.local_ray import ray_log_level, start_local_ray, start_timeout
from orchestrator.launch.relay import install_relay

logger = logging.getLogger("detrdistill")

# MLflow runs this process has open, so that a stop signal can close them
ACTIVE_RUNS: list[Any] = []
_handle_stop = False
_received: list[int] = []  # the stop signals received, newest last
_started_here: list[bool] = []  # whether init_ray started a local Ray (not a cluster's)


def handle_stop_signals() -> None:
    """SIGINT (Ctrl-C) and SIGTERM (how `detrdistill jobs stop` ends a job) close this
    process's MLflow runs as KILLED at once, so they never stay RUNNING. `ray.init` installs
    its own handlers (its SIGINT handler calls sys.exit), so `init_ray` installs these again."""
    global _handle_stop
    _handle_stop = True
    _install()


def _install() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_stop_signal)


def _on_stop_signal(signum, frame) -> None:
    _received.append(signum)
    close_active_runs("KILLED")  # at once: the process may be killed before it unwinds
    raise KeyboardInterrupt(f"signal {signum}")


def shutdown_local_ray(remove_session: bool = False) -> None:
    """Stop the local Ray this process started (a cluster's Ray is left alone). Its session
    folder (Ray's logs) is removed when `remove_session` (a command that succeeded), else kept
    and named (after a failure, the logs are what tells why)."""
    if not _started_here:
        return
    _started_here.clear()
    try:
        import ray

        node = getattr(ray._private.worker, "_global_node", None)
        folder = node.get_session_dir_path() if node is not None else None
        ray.shutdown()
    except Exception as err:  # best effort while failing anyway
        logger.debug(f"ray.shutdown: {err}")
        return
    if folder is None:
        return
    if remove_session:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        logger.info(f"Ray's logs of this command: {folder}")


def stopped(err: BaseException) -> RunStopped:
    """After Ctrl-C / SIGTERM / Ray's sys.exit: close the runs as KILLED, stop the local Ray,
    and the error the CLI turns into one line and exit code 130 or 143."""
    close_active_runs("KILLED")
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as shutdown_error:  # stopping is best effort
        logger.debug(f"ray.shutdown: {shutdown_error}")
    signum = _received[-1] if _received else signal.SIGINT
    return RunStopped(signum)


def close_active_runs(status: str) -> None:
    """Finish every open MLflow run of this process with `status`."""
    while ACTIVE_RUNS:
        try:
            ACTIVE_RUNS.pop().finish(status)
        except Exception as err:  # closing is best effort while being stopped
            logger.warning(f"could not close an MLflow run: {err}")


def init_ray(address: str | None, progress: bool = True) -> None:
    """Connect to `address` (or $RAY_ADDRESS inside a Ray Job), else start a local Ray within
    $DETRDISTILL_RAY_START_TIMEOUT seconds. The workers' output reaches this console through
    the relay (`progress`: their training progress as the live line)."""
    import ray

    if ray.is_initialized():
        return
    verbose = is_verbose()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray Job
    try:
        if address:
            ray.init(address=address, log_to_driver=True, logging_level=ray_log_level())
        else:
            _started_here.append(True)
            start_local_ray(start_timeout())
    except UserInputError:
        raise
    except Exception as err:  # e.g. a local start that times out on a busy machine
        shutdown_local_ray()
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RunFailed(f"could not start {where}: {str(err).splitlines()[0][:300]}") from None
    install_relay(verbose, progress)
    if _handle_stop:
        _install()
