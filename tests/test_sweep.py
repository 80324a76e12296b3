"""Ray Tune sweeps: search-space checks, an ASHA sweep and a PBT sweep with real Ray and MLflow."""

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.launch.sweep import format_results, run_sweep
from orchestrator.spec.loader import load_spec_dict
from orchestrator.spec.problems import SpecError
from orchestrator.spec.search_space import apply, assign, lookup

OD = {"method": "od_detr", "ema": {"decay": 0.9}}


def sweep_dict(tune, **extra):
    return {
        "name": "sw",
        "student": {"architecture": "dab_detr", "decoder_layers": 2},
        "distill": OD,
        "optim": {"step_epochs": [4]},
        "train": {"epochs": 4},
        "tune": tune,
        **extra,
    }


def problems(data):
    with pytest.raises(SpecError) as err:
        load_spec_dict(data, source="sweep.yaml")
    return [str(p) for p in err.value.problems]


def test_paths_and_values_are_checked_before_anything_runs():
    good = load_spec_dict(
        sweep_dict(
            {
                "search_space": {
                    "distill.aux_groups.weight": {"loguniform": [0.1, 10]},
                    "distill.initial_query.stage_weights": {"choice": ["uniform", [0.5, 1.0]]},
                    "optim.lr": {"grid": [1e-4, 1e-3]},
                    "distill.ema.decay": {"uniform": [0.9, 0.99]},
                    "train.loss.cls": {"randint": [1, 3]},
                }
            }
        ),
        source="sweep.yaml",
    )
    assert good.tune.search_space["optim.lr"].kind == "grid"
    found = problems(
        sweep_dict(
            {
                "search_space": {
                    "distill.aux_group.weight": {"uniform": [0, 1]},
                    "optim.lr": {"uniform": [-1, 1]},
                    "distill.initial_query.stage_weights": {"choice": [[1, 2, 3]]},
                    "optim": {"choice": [1]},
                }
            }
        )
    )
    text = "\n".join(found)
    assert (
        "tune.search_space.distill.aux_group.weight: no field 'distill.aux_group.weight' in this "
        "spec (did you mean 'distill.aux_groups.weight'?)" in text
    )
    # values are checked like any spec (pydantic fields and cross-field rules)
    assert (
        "tune.search_space.optim.lr: value -1.0 is invalid: optim.lr: must be greater than 0"
        in text
    )
    assert "value [1, 2, 3] is invalid: distill.initial_query.stage_weights: has 3 entries" in text
    assert "tune.search_space.optim: 'optim' is a section" in text
    (bad_range,) = problems(sweep_dict({"search_space": {"optim.lr": {"uniform": [0.5, 0.1]}}}))
    assert bad_range.endswith(
        "tune.search_space.optim.lr: uniform: low must be below high (got [0.5, 0.1])"
    )
    (no_teacher,) = problems(sweep_dict({"search_space": {"teacher.weights": {"choice": ["a"]}}}))
    assert "no field 'teacher.weights'" in no_teacher  # this spec has no teacher section


def test_scheduler_and_searcher_rules():
    pbt = {"kind": "pbt", "perturbation_interval": 3, "mutations": {}}
    text = "\n".join(
        problems(sweep_dict({"scheduler": pbt}, train={"epochs": 4, "eval_interval": 2}))
    )
    assert "tune.scheduler.mutations: PBT needs at least one dotted path" in text
    assert "tune.scheduler.perturbation_interval: 3 epochs does not divide" in text
    assert "train.eval_interval: must be 1 for a pbt sweep" in text
    text = "\n".join(
        problems(
            sweep_dict(
                {"searcher": "grid", "search_space": {"optim.lr": {"uniform": [1e-4, 1e-3]}}}
            )
        )
    )
    assert "tune.searcher: grid search needs every search_space entry" in text


def test_apply_sets_dotted_paths_without_touching_the_input():
    base = {"optim": {"lr": 1.0}, "distill": {"method": "od_detr"}}
    out = apply(base, {"optim.lr": 2.0, "distill.ema.decay": 0.5})
    assert out == {"optim": {"lr": 2.0}, "distill": {"method": "od_detr", "ema": {"decay": 0.5}}}
    assert base["optim"]["lr"] == 1.0 and lookup(out, "distill.ema.decay") == (True, 0.5)
    assert lookup(out, "distill.nothing") == (False, None)
    assert assign({}, "a.b", 1) == {"a": {"b": 1}}


def test_results_table_is_sorted_by_the_metric():
    rows = [
        {
            "trial": "b",
            "params": {"optim.lr": 0.01},
            "best": 0.5,
            "last": 0.4,
            "epochs": 4,
            "status": "done",
            "exploits": 1,
        },
        {
            "trial": "a",
            "params": {"optim.lr": 0.001},
            "best": None,
            "last": None,
            "epochs": 1,
            "status": "error",
            "exploits": 0,
        },
    ]
    table = format_results(rows, "val/AP").splitlines()
    assert (
        table[0] == "| trial | optim.lr | best val/AP | last val/AP | epochs | status | exploits |"
    )
    assert table[2].startswith("| b | 0.01 | 0.5 | 0.4 | 4 | done | 1")


@pytest.fixture
def sweep_spec(tiny_spec):
    """The tiny OD-DETR spec with a `tune` section: `sweep_spec(base, name, tune, **dotted)`."""

    def build(base, name, tune, **overrides):
        spec = tiny_spec(
            base,
            name=name,
            epochs=3,
            register_as=f"{name}-best",
            distill=OD,
            **{
                "student.architecture": "dab_detr",
                "train.stability_probe_images": 2,
                "scaling.cpus_per_worker": 1,
                "optim.step_epochs": [2],
                **overrides,
            },
        )
        data = spec.model_dump(mode="json")
        data["tune"] = tune
        return load_spec_dict(data, source="test")

    return build


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_asha_sweep_nests_trials_and_registers_the_best(tmp_path, ray_local, sweep_spec):
    tune = {
        "search_space": {"optim.lr": {"choice": [1e-4, 3e-3]}},
        "searcher": "grid",
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent_trials": 2,
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }
    # two trials of two epochs: ASHA's first rung is epoch 1 (the suite's time is budgeted)
    spec = sweep_spec(tmp_path, "asha", tune, **{"train.epochs": 2, "optim.step_epochs": [1]})
    result = run_sweep(spec, storage_path=tmp_path / "runs")
    assert len(result.rows) == 2 and result.best is not None
    assert result.rows[0]["best"] >= max(r["best"] or 0 for r in result.rows)
    client = MlflowClient(spec.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(spec.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(parents) == 1 and len(children) == 2
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}
    assert all(client.get_metric_history(r.info.run_id, "train/loss") for r in children)
    top = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"results.md", "metric_vs_params.png", "sweep_spec.yaml"} <= top
    assert result.registered_version == "1"
    version = client.get_model_version("asha-best", "1")
    assert "optim.lr" in version.description


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_pbt_sweep_exploits(tmp_path, ray_local, sweep_spec):
    tune = {
        "scheduler": {
            "kind": "pbt",
            "perturbation_interval": 1,
            "quantile_fraction": 0.5,
            "resample_probability": 1.0,
            "synch": True,
            "mutations": {"distill.aux_groups.weight": {"choice": [0.5, 1.0, 2.0]}},
        },
        "num_samples": 2,
        "max_concurrent_trials": 2,
        "resources": {"cpus_per_worker": 1},
    }
    spec = sweep_spec(tmp_path, "pbt", tune, **{"optim.step_epochs": [3]})
    result = run_sweep(spec, storage_path=tmp_path / "runs")
    assert len(result.rows) == 2
    assert sum(r["exploits"] for r in result.rows) >= 1, result.table
    assert "exploits" in result.table
