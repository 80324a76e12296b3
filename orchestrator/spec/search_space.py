"""Search spaces over dotted spec paths: checking them against the spec and applying sampled
values to a spec (their Ray Tune objects are built in `orchestrator.launch.tune_objects`).

A path must name a field of the spec as validated (defaults included), e.g.
`distill.logits.weight` exists in a DETRDistill spec even when the file does not write it. Every
value a distribution can give (each listed value, both ends of a range) is applied to the spec
and validated by the same pydantic model before anything runs.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from typing import Any

from orchestrator.spec.tune import Distribution, TuneSpec

Check = Callable[[dict], list[str]]  # validates a spec dict; returns its problems


def lookup(data: dict, dotted: str) -> tuple[bool, Any]:
    """(found, value) of a dotted path in nested dicts."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def assign(data: dict, dotted: str, value: Any) -> dict:
    """A deep copy of `data` with `value` at the dotted path (parents created as needed)."""
    data = copy.deepcopy(data)
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
    return data


def apply(data: dict, values: dict[str, Any]) -> dict:
    for dotted, value in values.items():
        data = assign(data, dotted, value)
    return data


def _leaf_paths(data: Any, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return [prefix] if prefix else []
    paths = [prefix] if prefix else []
    for key, value in data.items():
        paths += _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    return paths


def _missing_path(full: dict, dotted: str) -> str:
    close = difflib.get_close_matches(dotted, _leaf_paths(full), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"no field '{dotted}' in this spec{hint}; use a dotted path such as optim.lr"


def space_problems(
    full: dict, space: dict[str, Distribution], where: list[str], check: Check
) -> list[tuple[list[str], str]]:
    """(path parts, message) for every search-space entry that names no field or has a value
    that makes the spec invalid. `full` is the validated spec as a dict, without `tune`."""
    problems = []
    for dotted, distribution in space.items():
        found, current = lookup(full, dotted)
        if not found or dotted.split(".")[0] == "tune":
            problems.append(([*where, dotted], _missing_path(full, dotted)))
            continue
        if isinstance(current, dict):
            problems.append(
                ([*where, dotted], f"'{dotted}' is a section; search one of its fields instead")
            )
            continue
        for value in distribution.representatives():
            errors = check(assign(full, dotted, value))
            if errors:
                problems.append(([*where, dotted], f"value {value!r} is invalid: {errors[0]}"))
                break
    return problems


def tune_problems(
    full: dict, tune: TuneSpec, epochs: int, check: Check
) -> list[tuple[list[str], str]]:
    """Every problem of a `tune` section against the spec it sweeps."""
    problems = space_problems(full, tune.search_space, ["tune", "search_space"], check)
    kinds = {d.kind for d in tune.search_space.values()}
    if tune.searcher == "grid" and kinds - {"choice", "grid"}:
        problems.append(
            (
                ["tune", "searcher"],
                "grid search needs every search_space entry to be a choice or grid list; "
                "use searcher: random for ranges",
            )
        )
    if tune.searcher == "optuna" and "grid" in kinds:
        problems.append(
            (["tune", "searcher"], "optuna cannot take grid entries; write them as choice")
        )
    scheduler = tune.scheduler
    if scheduler.kind == "asha" and scheduler.max_epochs and scheduler.max_epochs > epochs:
        problems.append(
            (
                ["tune", "scheduler", "max_epochs"],
                f"{scheduler.max_epochs} is more than train.epochs ({epochs})",
            )
        )
    if scheduler.kind == "pbt":
        if not scheduler.mutations:
            problems.append(
                (["tune", "scheduler", "mutations"], "PBT needs at least one dotted path to mutate")
            )
        problems += space_problems(
            full, scheduler.mutations, ["tune", "scheduler", "mutations"], check
        )
        interval = scheduler.perturbation_interval
        steps = full.get("optim", {}).get("step_epochs", [])
        if full.get("optim", {}).get("schedule") == "step" and any(s % interval for s in steps):
            problems.append(
                (
                    ["tune", "scheduler", "perturbation_interval"],
                    f"{interval} epochs does not divide the stage boundaries optim.step_epochs "
                    f"{steps}; pick an interval that does, so trials are compared and copied at "
                    "stage boundaries",
                )
            )
        if "grid" in {d.kind for d in scheduler.mutations.values()}:
            problems.append(
                (["tune", "scheduler", "mutations"], "mutations take choice or ranges, not grid")
            )
    if scheduler.kind in ("asha", "pbt") and full.get("train", {}).get("eval_interval", 1) != 1:
        problems.append(
            (
                ["train", "eval_interval"],
                f"must be 1 for a {scheduler.kind} sweep: it compares trials by {tune.metric} "
                "every epoch",
            )
        )
    return problems
