"""`detrdistill submit` and `detrdistill jobs`: experiments and sweeps as Ray Jobs on a cluster.

The job's working directory holds the spec (overrides applied) and the small local files it
names (a teacher weights file); the project's packages travel as `py_modules`, so the cluster
needs only the dependencies (torch, Ray, MLflow, ...), not this project installed. The entry
point is `python -m orchestrator.cli.main run|sweep spec.yaml`.

Tracking: workers on a cluster cannot write the submitting machine's SQLite file, so a local
tracking URI is refused; use an `http(s)://` MLflow server the cluster can reach.
Auth: Ray's token (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token with
RAY_AUTH_MODE=token, or `--token-file`) goes in a request header and is never printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UserInputError
from orchestrator.spec.loader import load_spec
from orchestrator.spec.params import spec_to_yaml
from orchestrator.spec.sections import ExperimentSpec

logger = logging.getLogger("detrdistill")

PACKAGES = ("detr_models", "distill", "orchestrator")
ROOT = Path(__file__).resolve().parents[2]


def remote_tracking_uri(spec: ExperimentSpec, source: str) -> str:
    """The spec's tracking URI if a cluster can use it (http/https, or $MLFLOW_TRACKING_URI
    when the spec names none); a clear error otherwise."""
    uri = spec.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith(("http://", "https://", "databricks")):
        return uri
    shown = uri or "unset (it would default to sqlite:///<cwd>/mlflow.db on this machine)"
    raise UserInputError(
        f"{source}: mlflow.tracking_uri: {shown} is local to this machine, and workers on the "
        "cluster cannot write to it. Set mlflow.tracking_uri (or --set mlflow.tracking_uri=...) "
        "to an http(s):// MLflow server the cluster can reach, e.g. one started with "
        "`detrdistill mlflow-server --host 0.0.0.0 --port 5000`"
    )


def redact_url_credentials(text: str) -> str:
    """`scheme://user:pass@host` -> `scheme://***@host` wherever it appears in `text`."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


class Client:
    """A JobSubmissionClient that carries the token and never shows it."""

    def __init__(self, address: str | None, token_file: Path | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        address = (
            address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
        )
        if not address:
            raise UserInputError(
                "--address: give the Ray dashboard address, e.g. http://HEAD:8265 (or set "
                "RAY_ADDRESS)"
            )
        self.address = address.rstrip("/")
        self.shown_address = redact_url_credentials(self.address)  # for messages
        self._secret = None
        headers = None
        if token_file is not None:
            try:
                self._secret = Path(token_file).read_text().strip()
            except OSError as err:
                raise UserInputError(
                    f"--token-file: cannot read {token_file} ({err.strerror})"
                ) from None
            if not self._secret:
                raise UserInputError(f"--token-file: {token_file} is empty")
            headers = {"authorization": f"Bearer {self._secret}"}
        try:
            self.jobs = JobSubmissionClient(self.address, headers=headers)
        except Exception as err:
            raise UserInputError(
                f"--address: cannot reach the Ray dashboard at {self.shown_address}: "
                f"{self.redact(str(err))[:300]}"
            ) from None

    def redact(self, text: str) -> str:
        """`text` without the token and without credentials written into a URL."""
        text = redact_url_credentials(text)
        return text.replace(self._secret, "***") if self._secret else text

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.jobs, method)(*args, **kwargs)
        except Exception as err:
            raise UserInputError(f"{method}: {self.redact(str(err))[:500]}") from None


def package(spec: ExperimentSpec, spec_file: Path) -> Path:
    """A working directory with the spec and the local teacher weights file it names."""
    folder = Path(tempfile.mkdtemp(prefix="detrdistill-job-"))
    if spec.teacher is not None and "://" not in spec.teacher.source:
        weights = Path(spec.teacher.source)
        local = weights if weights.is_absolute() else spec_file.parent / weights
        if not weights.is_absolute() and local.is_file():
            target = folder / weights
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local, target)
        elif not weights.is_absolute() and local.is_dir():  # a Hugging Face teacher's folder
            shutil.copytree(local, folder / weights)
    (folder / "spec.yaml").write_text(spec_to_yaml(spec))
    return folder


def submit(
    spec_file: Path,
    address: str | None,
    overrides: list[str],
    sweep: bool = False,
    wait: bool = False,
    runtime_env_file: Path | None = None,
    token_file: Path | None = None,
    run_name: str | None = None,
) -> int:
    """Submit `detrdistill run` (or `sweep`) of a spec as a Ray Job; returns the exit code.

    Each submission is its own run (run name `job-<time>`) unless `run_name` is given: the job's
    directory is fresh, so reusing a name would replace the earlier run's MLflow record."""
    spec = load_spec(spec_file, overrides)
    uri = remote_tracking_uri(spec, str(spec_file))
    if spec.mlflow.tracking_uri is None:
        spec = spec.model_copy(
            update={"mlflow": spec.mlflow.model_copy(update={"tracking_uri": uri})}
        )
    if sweep and spec.tune is None:
        raise UserInputError(f"{spec_file}: --sweep needs a 'tune' section in the spec")
    runtime_env: dict[str, Any] = {}
    if runtime_env_file is not None:
        try:
            runtime_env = yaml.safe_load(Path(runtime_env_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserInputError(f"--runtime-env: cannot read {runtime_env_file}: {err}") from None
        if not isinstance(runtime_env, dict):
            raise UserInputError(f"--runtime-env: {runtime_env_file} must hold a mapping")
    client = Client(address, token_file)
    folder = package(spec, spec_file)
    command = "sweep" if sweep else "run"
    runtime_env.setdefault("working_dir", str(folder))
    runtime_env.setdefault("py_modules", [str(ROOT / name) for name in PACKAGES])
    # `jobs stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default is 3):
    # time to close the MLflow run as KILLED
    runtime_env.setdefault("env_vars", {}).setdefault("RAY_JOB_STOP_WAIT_TIME_S", "30")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    job_id = f"detrdistill-{spec.name}-{stamp}"
    run_name = run_name or f"job-{stamp}"
    experiment = spec.mlflow.experiment or spec.name
    client.call(
        "submit_job",
        entrypoint=f"python -m orchestrator.cli.main {command} spec.yaml --run-name {run_name}",
        submission_id=job_id,
        runtime_env=runtime_env,
        metadata={"detrdistill": command, "spec": spec.name, "mlflow_experiment": experiment},
    )
    shutil.rmtree(folder, ignore_errors=True)
    logger.info(f"submitted job {job_id}")
    logger.info(f"  dashboard: {client.shown_address}/#/jobs/{job_id}")
    logger.info(f"  MLflow:    experiment {experiment!r} at {uri}")
    logger.info(
        f"  follow:    detrdistill jobs logs {job_id} --follow --address {client.shown_address}"
    )
    if not wait:
        return 0
    return follow(client, job_id)


def follow(client: Client, job_id: str) -> int:
    """Stream a job's logs until it ends; 0 if it succeeded."""

    pending = [""]  # Ray cuts the stream anywhere: log whole lines only

    async def stream() -> None:
        async for chunk in client.jobs.tail_job_logs(job_id):
            *lines, pending[0] = (pending[0] + client.redact(chunk)).split("\n")
            for line in lines:
                logger.info(line)

    try:
        asyncio.run(stream())
    except Exception as err:  # the log stream may drop; the status still tells the outcome
        logger.info(f"(log stream ended: {client.redact(str(err))[:200]})")
    if pending[0]:
        logger.info(pending[0])
    status = _final_status(client, job_id)
    logger.info(f"job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def _final_status(client: Client, job_id: str) -> str:
    for _ in range(120):
        status = str(client.call("get_job_status", job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    return status


def jobs_command(args: Any) -> int:
    """`detrdistill jobs list | status ID | logs ID [--follow] | stop ID`."""
    client = Client(args.address, args.token_file)
    if args.action == "list":
        rows = client.call("list_jobs")
        width = max([len(j.submission_id or j.job_id or "-") for j in rows] + [6]) + 2
        logger.info(f"{'job id':<{width}}{'status':<11}{'started':<21}entrypoint")
        for job in sorted(rows, key=lambda j: j.start_time or 0):
            started = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
                if job.start_time
                else "-"
            )
            name = job.submission_id or job.job_id or "-"
            logger.info(f"{name:<{width}}{job.status.value:<11}{started:<21}{job.entrypoint[:60]}")
        return 0
    if not args.job_id:
        raise UserInputError(f"jobs {args.action}: give the job id (see `detrdistill jobs list`)")
    client.call("get_job_status", args.job_id)  # an unknown id is an error before anything else
    if args.action == "status":
        info = client.call("get_job_info", args.job_id)
        logger.info(
            json.dumps(
                {
                    "job_id": args.job_id,
                    "status": info.status.value,
                    "message": info.message,
                    "metadata": info.metadata,
                },
                indent=2,
            )
        )
        return 0
    if args.action == "logs":
        if args.follow:
            return follow(client, args.job_id)
        logger.info((client.redact(client.call("get_job_logs", args.job_id))).rstrip("\n"))
        return 0
    stopped = client.call("stop_job", args.job_id)
    logger.info(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0
