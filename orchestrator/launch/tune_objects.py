"""The Ray Tune objects of a spec's `tune:` section: the search space (distributions over
dotted spec paths), the trial scheduler (fifo, ASHA, PBT with its mutations) and the searcher
(random/grid, or Optuna when installed)."""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

from orchestrator.errors import UserInputError
from orchestrator.spec.sections import ExperimentSpec
from orchestrator.spec.tune import Distribution


def to_tune(distribution: Distribution, searcher: str) -> Any:
    """The Ray Tune search-space object of one distribution."""
    kind, values = distribution.kind, distribution.values
    if kind == "grid" or (searcher == "grid" and kind == "choice"):
        return tune.grid_search(list(values))
    if kind == "choice":
        return tune.choice(list(values))
    if kind == "uniform":
        return tune.uniform(*values)
    if kind == "loguniform":
        return tune.loguniform(*values)
    return tune.randint(values[0], values[1] + 1)  # Tune's upper end is exclusive


def mutation(distribution: Distribution) -> Any:
    """A PBT mutation: a list to pick from, or a Tune distribution to resample."""
    if distribution.kind == "choice":
        return list(distribution.values)
    return to_tune(distribution, "random")


def tune_scheduler(spec: ExperimentSpec) -> Any:
    s = spec.tune.scheduler
    if s.kind == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            max_t=s.max_epochs or spec.train.epochs,
        )
    if s.kind == "pbt":
        return PopulationBasedTraining(
            time_attr="epoch",
            perturbation_interval=s.perturbation_interval,
            hyperparam_mutations={k: mutation(d) for k, d in s.mutations.items()},
            quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability,
            synch=s.synch,
        )
    return FIFOScheduler()


def tune_searcher(spec: ExperimentSpec) -> Any:
    if spec.tune.searcher != "optuna":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as err:
        raise UserInputError(
            f"tune.searcher: optuna is not installed ({err}); pip install 'detrdistill[optuna]'"
        ) from None
    return OptunaSearch()


def param_space(spec: ExperimentSpec) -> dict[str, Any]:
    tune_spec = spec.tune
    space = {k: to_tune(d, tune_spec.searcher) for k, d in tune_spec.search_space.items()}
    if tune_spec.scheduler.kind == "pbt":
        # PBT starts every trial from a sample of each mutated path
        for key, distribution in tune_spec.scheduler.mutations.items():
            space.setdefault(key, to_tune(distribution, "random"))
    return space
