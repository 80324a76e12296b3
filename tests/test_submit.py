"""Submitting to a Ray cluster: local tracking refused, the token never shown, and a real local
Ray head (dashboard) with a real `mlflow server` running a submitted experiment."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.cli.cluster_commands import server_command
from orchestrator.cli.main import main

BIN = Path(sys.executable).parent
SECRET = "s3cr3t-token-value-42"


@pytest.fixture
def tiny_yaml(tiny_spec_dict):
    """`tiny_yaml(path, tracking_uri, epochs=1)`: the tiny spec as a YAML file (data generated
    where the job runs)."""

    def write(path: Path, tracking_uri: str | None, epochs: int = 1) -> Path:
        spec = tiny_spec_dict(
            path.parent,
            name="remote-tiny",
            epochs=epochs,
            workers=1,
            register_as="remote-tiny",
            **{"data.source.cache_dir": "data/cache", "train.stability_probe_images": 2},
        )
        spec["mlflow"]["log_images"] = 0
        if tracking_uri:
            spec["mlflow"]["tracking_uri"] = tracking_uri
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.mark.parametrize("uri", [None, "sqlite:///mlflow.db", "/tmp/mlruns", "file:///tmp/x"])
def test_a_local_tracking_uri_is_refused_before_anything_is_sent(
    tmp_path, uri, capsys, monkeypatch, tiny_yaml
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tiny_yaml(tmp_path / "spec.yaml", uri)
    code = main(["submit", str(spec), "--address", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2
    assert "mlflow.tracking_uri" in err and "http(s)://" in err and str(spec) in err


def test_the_token_never_appears_in_output(tmp_path, capsys, tiny_yaml):
    token = tmp_path / "token"
    token.write_text(SECRET + "\n")
    spec = tiny_yaml(tmp_path / "spec.yaml", "http://127.0.0.1:9")
    # nothing listens on port 9: the request fails, and its error must not carry the header
    code = main(
        ["submit", str(spec), "--address", "http://127.0.0.1:9", "--token-file", str(token)]
    )
    out = capsys.readouterr()
    assert code == 2 and "127.0.0.1:9" in out.err
    assert SECRET not in out.out + out.err
    code = main(["jobs", "list", "--address", "http://127.0.0.1:9", "--token-file", str(token)])
    out = capsys.readouterr()
    assert code == 2 and SECRET not in out.out + out.err
    # credentials written into the address are redacted like the token
    address = f"http://admin:{SECRET}@127.0.0.1:9"
    code = main(["submit", str(spec), "--address", address])
    out = capsys.readouterr()
    assert code == 2 and "http://***@127.0.0.1:9" in out.err
    assert SECRET not in out.out + out.err
    empty = tmp_path / "empty"
    empty.write_text("")
    assert main(["jobs", "list", "--address", "http://x:1", "--token-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {seconds}s")


@contextlib.contextmanager
def local_cluster(tmp_path: Path, token_file: Path | None = None):
    """A local Ray head with the dashboard and an MLflow server, on free loopback ports, with
    token authentication when `token_file` is given; both are stopped whatever happens."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}:{os.environ['PATH']}")
    if token_file is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    gcs, dashboard, mlflow_port = free_port(), free_port(), free_port()
    temp = Path("/tmp") / f"rt{os.getpid()}"  # ray's socket paths must stay short
    server = subprocess.Popen(
        server_command(tmp_path / "mlflow", "127.0.0.1", mlflow_port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        subprocess.run(
            [str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--port", str(gcs),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
             "--include-dashboard", "true", "--temp-dir", str(temp), "--disable-usage-stats"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        address = f"http://127.0.0.1:{dashboard}"
        if token_file is None:
            wait_for(f"{address}/api/version", 60)
        else:
            time.sleep(10)  # the dashboard answers 401 without the token
        wait_for(f"http://127.0.0.1:{mlflow_port}/health", 60)
        yield address, f"http://127.0.0.1:{mlflow_port}"
    finally:
        subprocess.run(
            [str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120
        )
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_submit_runs_on_a_token_protected_cluster_tracks_to_its_server_and_stops(
    tmp_path, capsys, tiny_yaml
):
    token = tmp_path / "token"
    token.write_text(SECRET)
    with local_cluster(tmp_path, token) as (address, tracking):
        # without the token the cluster refuses, with a clear message and exit 2
        assert main(["jobs", "list", "--address", address]) == 2
        assert "Authentication required" in capsys.readouterr().err
        auth = ["--address", address, "--token-file", str(token)]
        spec = tiny_yaml(tmp_path / "spec.yaml", tracking, epochs=2)
        code = main(["submit", str(spec), *auth, "--wait"])
        out = capsys.readouterr()
        assert code == 0 and "SUCCEEDED" in out.out, out.out[-3000:]
        assert "submitted job detrdistill-remote-tiny-" in out.out
        assert SECRET not in out.out + out.err
        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("remote-tiny")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
        assert SECRET not in str(run.data.params) + str(run.data.tags)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
        assert client.get_model_version("remote-tiny", "1").run_id == run.info.run_id
        _a_stopped_job_ends_killed(tmp_path, capsys, tiny_yaml, tracking, auth, experiment)


def _a_stopped_job_ends_killed(tmp_path, capsys, tiny_yaml, tracking, auth, experiment):
    """A longer job, stopped while it runs: STOPPED, and its MLflow run closed as KILLED."""
    client = MlflowClient(tracking)
    long_spec = tiny_yaml(tmp_path / "long.yaml", tracking, epochs=200)
    assert main(["submit", str(long_spec), *auth]) == 0
    job_id = next(
        line.split()[-1] for line in capsys.readouterr().out.splitlines() if "submitted job" in line
    )
    deadline = time.monotonic() + 180  # until the job has started its MLflow run
    while time.monotonic() < deadline:
        if len(client.search_runs([experiment.experiment_id])) == 2:
            break
        time.sleep(2)
    assert main(["jobs", "status", job_id, *auth]) == 0
    assert '"RUNNING"' in capsys.readouterr().out
    assert main(["jobs", "stop", job_id, *auth]) == 0
    deadline = time.monotonic() + 120
    status = ""
    while time.monotonic() < deadline and '"STOPPED"' not in status:
        main(["jobs", "status", job_id, *auth])
        status = capsys.readouterr().out
        time.sleep(2)
    assert '"STOPPED"' in status
    # the stopped job closed its MLflow run as KILLED (SIGTERM is handled like Ctrl-C)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = {r.info.status for r in client.search_runs([experiment.experiment_id])}
        if statuses == {"FINISHED", "KILLED"}:
            break
        time.sleep(2)
    assert statuses == {"FINISHED", "KILLED"}
    assert main(["jobs", "list", *auth]) == 0
    listing = capsys.readouterr().out
    assert job_id in listing and "SUCCEEDED" in listing
