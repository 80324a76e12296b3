"""CLI for clusters: `submit`, `jobs` and `mlflow-server`."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from orchestrator.cli.args import add_override_option, run_name


def add_cluster_commands(commands: argparse._SubParsersAction) -> None:
    """Register submit/jobs/mlflow-server on the top-level subparsers."""
    submit = commands.add_parser(
        "submit",
        help="submit an experiment (or with --sweep its sweep) to a Ray cluster as a Ray Job",
        description="Packages the spec and the project's code as the job's runtime env and runs "
        "`detrdistill run` (or `sweep`) on the cluster. Needs an http(s) MLflow tracking URI.",
    )
    submit.add_argument("spec", type=Path, help="experiment YAML")
    submit.add_argument("--sweep", action="store_true", help="run the spec's tune section")
    submit.add_argument("--address", help="Ray dashboard, e.g. http://HEAD:8265 ($RAY_ADDRESS)")
    submit.add_argument("--wait", action="store_true", help="stream the logs until the job ends")
    submit.add_argument("--runtime-env", type=Path, help="YAML/JSON runtime env to merge in")
    submit.add_argument("--token-file", type=Path, help="file holding the Ray auth token")
    submit.add_argument(
        "--run-name",
        type=run_name,
        help="run name on the cluster (default: job-<time>, a new run per job)",
    )
    add_override_option(submit)
    submit.set_defaults(handler=_submit)

    jobs = commands.add_parser("jobs", help="list, inspect, follow or stop Ray Jobs")
    jobs.add_argument("action", choices=("list", "status", "logs", "stop"))
    jobs.add_argument("job_id", nargs="?", help="the job id printed by submit")
    jobs.add_argument("--address", help="Ray dashboard, e.g. http://HEAD:8265 ($RAY_ADDRESS)")
    jobs.add_argument("--token-file", type=Path, help="file holding the Ray auth token")
    jobs.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jobs.set_defaults(handler=_jobs)

    server = commands.add_parser(
        "mlflow-server",
        help="start an MLflow tracking server (SQLite store, proxied artifacts) for a team",
    )
    server.add_argument("--store", type=Path, default=Path("mlflow-server"), help="data folder")
    server.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve a cluster")
    server.add_argument("--port", type=int, default=5000)
    server.set_defaults(handler=_mlflow_server)


def _submit(args: argparse.Namespace) -> int:
    from orchestrator.launch.submit import submit

    return submit(
        args.spec,
        args.address,
        args.overrides,
        args.sweep,
        args.wait,
        args.runtime_env,
        args.token_file,
        args.run_name,
    )


def _jobs(args: argparse.Namespace) -> int:
    from orchestrator.launch.submit import jobs_command

    return jobs_command(args)


def server_command(store: Path, host: str, port: int) -> list[str]:
    """The `mlflow server` command line: SQLite store and artifacts served by the server."""
    store = store.resolve()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [
        mlflow,
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
    ]


def _mlflow_server(args: argparse.Namespace) -> int:
    args.store.mkdir(parents=True, exist_ok=True)
    command = server_command(args.store, args.host, args.port)
    print(
        f"MLflow server on http://{args.host}:{args.port} (store {args.store.resolve()}); "
        f"set mlflow.tracking_uri: http://<this host>:{args.port}",
        flush=True,
    )
    os.execv(command[0], command)
    return 0
