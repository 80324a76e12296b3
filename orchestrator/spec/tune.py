"""The `tune:` section of an experiment spec: a Ray Tune sweep over dotted spec paths."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from detr_models.config import NonNegFloat, PositiveInt, StrictConfig

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


class Distribution(StrictConfig):
    """Exactly one of: `choice: [a, b, ...]` (sampled), `grid: [a, b, ...]` (every value),
    `uniform: [low, high]`, `loguniform: [low, high]` (low > 0), `randint: [low, high]`
    (integers, both ends included)."""

    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})"
            )
        kind = given[0]
        if kind in ("uniform", "loguniform", "randint"):
            low, high = getattr(self, kind)
            if not low < high and not (kind == "randint" and low == high):
                raise ValueError(f"{kind}: low must be below high (got [{low}, {high}])")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: low must be greater than 0 (got {low})")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)

    def representatives(self) -> list[Any]:
        """Values that stand for the whole distribution when checking it: every listed value,
        or both ends of a range."""
        return list(self.values)


class FifoScheduler(StrictConfig):
    """Every trial runs to the end."""

    kind: Literal["fifo"] = "fifo"


class AshaScheduler(StrictConfig):
    """Asynchronous successive halving: trials below the top 1/reduction_factor at a rung
    (grace_period, grace_period * rf, ... epochs) stop."""

    kind: Literal["asha"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    max_epochs: PositiveInt | None = Field(None, description="default: train.epochs")


class PbtScheduler(StrictConfig):
    """Population based training: every `perturbation_interval` epochs the bottom
    `quantile_fraction` of trials copy a top trial's checkpoint and perturb its `mutations`."""

    kind: Literal["pbt"] = "pbt"
    perturbation_interval: PositiveInt = Field(
        2, description="epochs; optim.step_epochs must fall on multiples of it"
    )
    mutations: dict[str, Distribution] = Field(default_factory=dict)
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.25
    resample_probability: Annotated[float, Field(ge=0, le=1)] = 0.25
    synch: bool = Field(False, description="wait for every trial at each perturbation")


Scheduler = Annotated[FifoScheduler | AshaScheduler | PbtScheduler, Field(discriminator="kind")]


class TuneResources(StrictConfig):
    """Per-trial resources; unset fields take the spec's `scaling` values."""

    num_workers: Annotated[int, Field(ge=1)] | None = None
    cpus_per_worker: Annotated[float, Field(gt=0)] | None = None
    gpus_per_worker: NonNegFloat | None = Field(None, description="fractions share a GPU")


class TuneSpec(StrictConfig):
    """A Ray Tune sweep: `detrdistill sweep FILE`. Search-space keys are dotted spec paths."""

    search_space: dict[str, Distribution] = Field(default_factory=dict)
    metric: str = "val/AP"
    mode: Literal["max", "min"] = "max"
    num_samples: PositiveInt = Field(
        1, description="trials drawn (with grid values: repeats of the whole grid)"
    )
    max_concurrent_trials: PositiveInt = 1
    resources: TuneResources = Field(default_factory=TuneResources)
    scheduler: Scheduler = Field(default_factory=FifoScheduler)
    searcher: Literal["random", "grid", "optuna"] = "random"
