"""Starting a local Ray for one command: a start bounded by a timeout (a busy machine is waited
for, then reported in one line, and nothing half-started is left running), and an instance
that knows its own address, so that two commands on one machine never look at each other's."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager, suppress

from orchestrator.console import is_verbose
from orchestrator.errors import UserInputError

logger = logging.getLogger("detrdistill")

TIMEOUT_ENV = "DETRDISTILL_RAY_START_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
# processes a local Ray start spawns below its driver (ray/_private/services.py)
_RAY_PROCESS_NAMES = ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor", "ray::")


def start_timeout() -> float:
    """Seconds a local Ray may take to start: $DETRDISTILL_RAY_START_TIMEOUT, else 120."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UserInputError(
            f"{TIMEOUT_ENV}={text!r} is not a number of seconds > 0; e.g. {TIMEOUT_ENV}=300"
        )
    return value


def start_local_ray(timeout_s: float) -> None:
    """`ray.init` of a new local instance that must be up within `timeout_s`.

    Its GCS port is chosen here and handed to every Ray process as $RAY_ADDRESS: Ray Train's
    helpers (e.g. the placement-group cleaner) look up "the" local cluster, which fails with a
    traceback when another command's Ray runs on the same machine. Ray's own waits for its GCS
    (at start, and when a loaded machine starves it during the run) get the same budget."""
    import ray

    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    budget = str(max(int(timeout_s), 60))
    waits = (
        "RAY_gcs_server_port_wait_time_s",
        "RAY_gcs_rpc_server_reconnect_timeout_s",
        "RAY_gcs_server_request_timeout_seconds",
    )
    env = {name: budget for name in waits if name not in os.environ}  # yours win
    env["RAY_GCS_SERVER_PORT"] = str(port)
    env["RAY_ADDRESS"] = address  # inherited by the processes this start spawns
    started = time.monotonic()
    logger.info(f"starting a local Ray (up to {timeout_s:g} s, ${TIMEOUT_ENV})")
    try:
        with _environment(env), _deadline(timeout_s), _progress(started):
            # "local": a new instance, whatever $RAY_ADDRESS (set just above) says
            ray.init(
                address="local",
                include_dashboard=True,
                log_to_driver=True,
                logging_level=ray_log_level(),
            )
    except BaseException as err:
        _stop_half_started()
        if isinstance(err, _StartTimeout):
            raise RuntimeError(
                f"no answer within {timeout_s:g} s (is the machine busy?); "
                f"wait longer with {TIMEOUT_ENV}=SECONDS or --ray-start-timeout SECONDS"
            ) from None
        raise
    logger.debug(f"local Ray at {address} started in {time.monotonic() - started:.1f} s")


def ray_log_level() -> int:
    """The level of Ray's own logger in the driver: its start notes only with -v."""
    return logging.DEBUG if is_verbose() else logging.WARNING


class _StartTimeout(Exception):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


@contextmanager
def _environment(values: dict[str, str]):
    """Set `values` in os.environ for the block; what was there before comes back after (the
    started processes keep them; this process must not point a later start at this one)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _deadline(seconds: float):
    """Raise _StartTimeout in the block after `seconds` (main thread only: elsewhere, Ray's own
    waits, set from the same budget, are the bound)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _StartTimeout()

    def unraisable(info):  # the timeout raised inside a finalizer: dropped, quietly
        if not isinstance(info.exc_value, _StartTimeout):
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGALRM, expire), sys.unraisablehook
    sys.unraisablehook = unraisable
    # and again every 0.5 s: Python drops an exception raised while a finalizer runs
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.unraisablehook = previous_hook


@contextmanager
def _progress(started: float, every_s: float = 15.0):
    """A line every `every_s` seconds while Ray is still starting."""
    done = threading.Event()

    def report():
        while not done.wait(every_s):
            logger.info(f"still starting Ray ({time.monotonic() - started:.0f} s)")

    thread = threading.Thread(target=report, daemon=True, name="ray-start-progress")
    thread.start()
    try:
        yield
    finally:
        done.set()


def _stop_half_started() -> None:
    """After a failed or interrupted start: `ray.shutdown`, then end any Ray process this one
    spawned that is still running (a start cut short leaves them without an owner)."""
    try:
        import ray

        ray.shutdown()
    except Exception as err:  # best effort while failing anyway
        logger.debug(f"ray.shutdown: {err}")
    for pid in ray_children(os.getpid()):
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def ray_children(parent: int) -> list[int]:
    """The Ray processes below `parent` (from /proc; empty where there is none)."""
    found = []
    for pid in _descendants(parent):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                command = file.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(name in command for name in _RAY_PROCESS_NAMES):
            found.append(pid)
    return found


def _descendants(parent: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    result, todo = [], [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            result.append(child)
            todo.append(child)
    return result
