"""A local Ray per command: a bounded start that leaves nothing half-started, and two commands
on one machine that never look at each other's Ray."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator.cli.main"]


def _gcs_servers() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"gcs_server" in command.split(b"\0")[0]:
                found.add(int(entry))
    return found


def _spec_file(tmp_path, tiny_spec_dict, name):
    data = tiny_spec_dict(tmp_path, name=name, workers=1, register_as=None, epochs=1)
    data["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(args, cwd, env=None, **kwargs):
    return subprocess.Popen(
        CLI + args,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.timeout(120)
def test_a_local_ray_that_does_not_start_in_time_is_one_line_and_leaves_nothing(
    tmp_path, tiny_spec_dict
):
    spec = _spec_file(tmp_path, tiny_spec_dict, "slow-start")
    before = _gcs_servers()
    started = time.monotonic()
    process = _run(
        ["run", str(spec), "--storage", str(tmp_path / "runs"), "--ray-start-timeout", "0.5"],
        tmp_path,
    )
    _, err = process.communicate(timeout=100)
    assert process.returncode == 1, err
    assert "Traceback" not in err and "Exception" not in err, err
    last = err.strip().splitlines()[-1]  # one line says it all
    assert last.startswith("error: could not start a local Ray: no answer within 0.5 s"), err
    assert "--ray-start-timeout" in last
    assert time.monotonic() - started < 60
    time.sleep(1)
    assert _gcs_servers() <= before  # the half-started Ray is gone


def test_a_bad_start_timeout_in_the_environment_is_refused(tmp_path, tiny_spec_dict):
    spec = _spec_file(tmp_path, tiny_spec_dict, "bad-timeout")
    process = _run(
        ["run", str(spec), "--storage", str(tmp_path / "runs")],
        tmp_path,
        env={"DETRDISTILL_RAY_START_TIMEOUT": "soon"},
    )
    _, err = process.communicate(timeout=100)
    assert process.returncode == 2
    assert "DETRDISTILL_RAY_START_TIMEOUT='soon'" in err


@pytest.mark.timeout(120)
def test_every_process_of_a_local_ray_knows_its_own_cluster(tmp_path):
    probe = (
        "import os, ray\n"
        "from orchestrator.launch.session import init_ray\n"
        "init_ray(None)\n"
        "seen = ray.get(ray.remote(lambda: os.environ.get('RAY_ADDRESS')).remote())\n"
        "print(seen == ray.get_runtime_context().gcs_address, os.environ.get('RAY_ADDRESS'))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    # workers look up their own cluster, and the driver's environment is as it was
    assert done.stdout.split()[-2:] == ["True", "None"], done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_runs_at_once_on_one_machine_are_quiet_and_clean_up(tmp_path, tiny_spec_dict):
    ray_temp = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    sessions = set(ray_temp.glob("session_2*"))
    runs = []
    for name in ("left", "right"):
        spec = _spec_file(tmp_path, tiny_spec_dict, name)
        runs.append(_run(["run", str(spec), "--storage", str(tmp_path / name)], tmp_path))
        time.sleep(2)
    for name, process in zip(("left", "right"), runs, strict=True):
        out, err = process.communicate(timeout=280)
        assert process.returncode == 0, err
        assert "Traceback" not in err and "Found multiple active Ray instances" not in err, err
        _assert_a_quiet_console(out + err, f"{name}-default")
    assert set(ray_temp.glob("session_2*")) <= sessions  # each removed its Ray's session folder


def _assert_a_quiet_console(text: str, run_key: str) -> None:
    """What a user sees of a run: the product's lines once each, none of Ray's own."""
    lines = [line for line in text.splitlines() if line.strip()]
    for noise in ("TrainingReport(", "Checkpoint successfully created", "RayTrainWorker", "\x1f"):
        assert not any(noise in line for line in lines), (noise, text)
    assert not any(a == b for a, b in itertools.pairwise(lines)), text  # nothing printed twice
    assert sum("validation: AP" in line for line in lines) == 1, text  # the one evaluation
    assert f"run {run_key} finished in" in text and "browse: mlflow ui" in text, text
    assert len(lines) < 40, text
