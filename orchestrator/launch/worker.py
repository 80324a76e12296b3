"""The Ray side of a training worker: `train_worker` (what Ray Train's TorchTrainer runs), the
reporter that turns the fit loop's reports into `ray.train.report` / `ray.tune.report`, and
`build_trainer`, the TorchTrainer of a spec."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.console import configure_console, is_verbose, quiet_libraries
from orchestrator.spec.loader import load_spec_dict
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.training.fit import default_device, fault_injector, run_training


class RayTrainReporter:
    """Reporter for a Ray Train worker, or (with `api=ray.tune`) for a Tune trial running the
    loop itself, as PBT needs. `owner` names the trial that writes the checkpoints: a checkpoint
    of another owner at resume means PBT copied it over (an exploit)."""

    def __init__(self, scratch: str | Path, api: Any = None, owner: str | None = None) -> None:
        import ray.train

        self._train = api or ray.train
        self.rank = ray.train.get_context().get_world_rank() if api is None else 0
        self.owner = owner
        self._dirs: list[tempfile.TemporaryDirectory] = []
        self.scratch = Path(scratch)
        self._written: list[Path] = []

    def resume_dir(self) -> Path | None:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            return None
        # as_directory may hand back a temporary copy that vanishes on exit: load inside it
        self._dirs.append(tempfile.TemporaryDirectory())
        with checkpoint.as_directory() as path:
            target = Path(self._dirs[-1].name)
            for item in Path(path).iterdir():
                (target / item.name).write_bytes(item.read_bytes())
        return target

    def new_checkpoint_dir(self, epoch: int) -> Path:
        # Ray copies a reported checkpoint into its storage, except in local mode
        # (num_workers=0) where it keeps our path: so keep the latest and drop older ones
        path = self.scratch / f"epoch_{epoch:04d}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    @property
    def last_checkpoint_dir(self) -> Path | None:
        """The checkpoint folder reported last (kept; older ones are removed)."""
        return self._written[-1] if self._written else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = (
            self._train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        )
        self._train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir is not None:
            for old in self._written:
                shutil.rmtree(old, ignore_errors=True)
            self._written = [checkpoint_dir]


def worker_device(spec: ExperimentSpec) -> torch.device:
    """This worker's device: Ray Train's GPU for its local rank under DDP."""
    if spec.scaling.use_gpu and torch.cuda.is_available() and dist.is_initialized():
        import ray.train.torch

        return ray.train.torch.get_device()
    return default_device(spec)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` holds the resolved spec dict and the MLflow run."""
    # Ray Train's local mode (num_workers 0) runs this in the driver: nothing to relay there
    relayed = config.get("driver_pid") != os.getpid()
    configure_console(config.get("verbose", False), relayed=relayed)
    spec = load_spec_dict(config["spec"], source="<worker>")
    reporter = RayTrainReporter(config["scratch_dir"])
    factory = None
    if config.get("mlflow_run_id"):
        from orchestrator.tracking import RunLogger

        def factory() -> RunLogger:
            return RunLogger(config["tracking_uri"], config["mlflow_run_id"])

    fault = config.get("fault_after_epoch")
    # the fault hits the first attempt only: a restarted or resumed run goes on
    hook = fault_injector(fault, Path(config["scratch_dir"]) / "fault-injected") if fault else None
    run_training(spec, reporter, factory, hook, worker_device(spec))


def build_trainer(
    spec: ExperimentSpec,
    run_key: str,
    storage: Path,
    extra: dict,
    callbacks=None,
    worker: Callable[[dict], None] | None = None,
):
    """The Ray Train TorchTrainer of a spec; its run name `run_key` makes it resumable.
    `worker` replaces the training function (`train_worker`), e.g. to time it."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    quiet_libraries(is_verbose())  # Ray's import set its own loggers' levels

    scaling = spec.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return TorchTrainer(
        worker or train_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "scratch_dir": str(storage / run_key / "scratch"),
            "verbose": is_verbose(),  # the driver's -v reaches the workers' console
            "driver_pid": os.getpid(),
            **extra,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_key,
            storage_path=str(storage),
            # Ray keeps the num_to_keep best by the score metric and, always, the latest; it
            # owns the run's checkpoint list (a resume reads it), so it also does the deleting
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.checkpoint.num_to_keep,
                checkpoint_score_attribute=spec.checkpoint.score_metric,
                checkpoint_score_order=spec.checkpoint.score_mode,
            ),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            callbacks=callbacks,
        ),
    )
