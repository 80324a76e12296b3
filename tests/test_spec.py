"""Experiment specs: the shipped YAMLs validate, bad specs give one clear line per problem,
overrides, path resolution, MLflow params and the committed JSON schema."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.cli.spec_commands import schema_json
from orchestrator.spec.loader import load_spec, load_spec_dict
from orchestrator.spec.params import MAX_PARAM_CHARS, flatten_params, spec_to_yaml
from orchestrator.spec.paths import resolve_paths
from orchestrator.spec.problems import SpecError

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))
BAD_SPECS = sorted((ROOT / "tests" / "bad_specs").glob("*.yaml"))
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <regex>'"
    return first.removeprefix("# expect: ")


# ----------------------------------------------------------------------------- the corpora
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    spec = load_spec(path)
    assert out.startswith(f"ok  {path}  ({spec.name}: {spec.student.architecture} student")


def test_corpora_are_there():
    assert {p.name for p in EXPERIMENTS} >= {
        "quickstart.yaml",
        "coco_detr_r50.yaml",
        "coco_conditional_detr_r50.yaml",
        "coco_dab_detr_r50.yaml",
    }
    assert len(BAD_SPECS) >= 10


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.name)
def test_bad_spec_fails_with_its_expected_message(path, capsys):
    expected = _expectation(path)
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert re.search(expected, err), f"{path.name}: {expected!r} not in:\n{err}"
    assert "Traceback" not in err and "pydantic" not in err and "http" not in err
    for line in err.splitlines():
        assert line.startswith(f"error: {path}"), line


def test_problem_carries_file_line_and_path():
    with pytest.raises(SpecError) as caught:
        load_spec(ROOT / "tests" / "bad_specs" / "negative_lr.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.path) == (5, "optim.lr")
    assert problem.file.endswith("negative_lr.yaml")


def test_lines_inside_discriminated_unions_and_for_missing_fields(tmp_path):
    text = (
        "name: x\n"  # 1
        "student: {architecture: detr}\n"  # 2
        "teacher:\n"  # 3
        "  model:\n"  # 4
        "    architecture: dab_detr\n"  # 5
        "    hiden_dim: 64\n"  # 6
        "    levels: [C4, C9]\n"  # 7
    )
    with pytest.raises(SpecError) as caught:
        load_spec(_write(tmp_path, text))
    found = {p.path: (p.line, p.message) for p in caught.value.problems}
    assert found == {
        "teacher.model.hiden_dim": (6, "unknown field; did you mean 'hidden_dim'?"),
        "teacher.model.levels.1": (7, "must be one of C2, C3, C4, C5 (got 'C9')"),
        "teacher.weights": (3, "required field is missing"),  # the line of its parent
    }


def test_all_problems_of_a_file_are_reported(tmp_path, capsys):
    text = (
        "name: bad name\n"
        "student:\n"
        "  architecture: conditional_detr\n"
        "  num_querys: 10\n"
        "optim: {lr: 0, schedule: linear}\n"
        "scaling: {num_workers: -1}\n"
    )
    path = _write(tmp_path, text)
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"error: {path}:1: name: must start with a letter or digit and contain only letters, "
        "digits, '_', '.' and '-' (got 'bad name')",
        f"error: {path}:4: student.num_querys: unknown field; did you mean 'num_queries'?",
        f"error: {path}:5: optim.lr: must be greater than 0 (got 0)",
        f"error: {path}:5: optim.schedule: must be one of step, cosine, constant (got 'linear')",
        f"error: {path}:6: scaling.num_workers: must be at least 0 (got -1)",
    ]
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert len(str(caught.value).splitlines()) == 5


def test_spec_error_survives_pickling():
    # Ray ships a worker's exception to the driver by pickling it
    with pytest.raises(SpecError) as caught:
        load_spec(ROOT / "tests" / "bad_specs" / "negative_lr.yaml")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert copy.problems == caught.value.problems
    assert str(copy) == str(caught.value)


def test_validate_goes_on_after_a_bad_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing), str(QUICKSTART)]) == 2
    captured = capsys.readouterr()
    assert f"error: {missing}: no such file" in captured.err
    assert f"ok  {QUICKSTART}  (quickstart: deformable_detr student, method none)" in captured.out


def test_dict_specs_name_their_source():
    data = {"name": "x", "student": {"architecture": "detr", "hidden_dim": -4}}
    with pytest.raises(SpecError, match=r"^trial 3: student\.hidden_dim: must be greater than 0"):
        load_spec_dict(data, source="trial 3")
    with pytest.raises(
        SpecError, match=r"^student\.hidden_dim: must be greater than 0 \(got -4\)$"
    ):
        load_spec_dict(data)
    assert data["student"]["hidden_dim"] == -4  # the caller's dict is not touched


def test_plain_exponent_floats_are_floats(tmp_path):
    spec = load_spec(
        _write(tmp_path, "name: x\nstudent: {architecture: detr}\noptim: {lr: 1e-4}\n")
    )
    assert spec.optim.lr == 1e-4 and isinstance(spec.optim.lr, float)


# ----------------------------------------------------------------------------- overrides
def test_overrides_change_values():
    spec = load_spec(
        QUICKSTART,
        [
            "optim.lr=1e-4",
            "train.amp=false",
            "student.levels=[C3, C5]",
            "train.loss.stage_weights=[1, 1, 1]",
            "train.loss.stage_weights.0=2",
            "data.train_scales.2=120",
            "checkpoint.num_to_keep=5",  # a section the file does not have
            "mlflow.tracking_uri=sqlite:///runs.db",
        ],
    )
    assert spec.optim.lr == 1e-4 and isinstance(spec.optim.lr, float)
    assert spec.train.amp is False
    assert spec.student.levels == ["C3", "C5"]
    assert spec.train.loss.stage_weights == [2.0, 1.0, 1.0]
    assert spec.data.train_scales == [96, 112, 120]
    assert spec.checkpoint.num_to_keep == 5
    assert spec.mlflow.tracking_uri == "sqlite:///runs.db"


def test_rtdetr_augment_defaults_and_overrides():
    detr = load_spec(QUICKSTART).data
    assert detr.augment == "detr"  # today's recipe unless a spec says otherwise
    spec = load_spec(QUICKSTART, ["data.augment=rtdetr", "data.rtdetr.stop_epoch=71"])
    rtdetr = spec.data.rtdetr
    assert spec.data.augment == "rtdetr" and rtdetr.stop_epoch == 71
    # the rtdetrv2 dataloader.yml values
    reference = [480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800]
    assert rtdetr.size == 640 and rtdetr.scales == reference
    assert (rtdetr.photometric_p, rtdetr.zoom_out_p, rtdetr.iou_crop_p) == (0.5, 0.5, 0.8)
    assert rtdetr.flip_p == 0.5
    with pytest.raises(SpecError, match=r"data\.augment: must be one of detr, rtdetr"):
        load_spec(QUICKSTART, ["data.augment=rt-detr"])


def test_a_bad_override_value_names_the_override(capsys):
    assert main(["validate", str(QUICKSTART), "--set", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --set optim.lr=-1: optim.lr: must be greater than 0 (got -1)\n"
    with pytest.raises(SpecError, match=r"^--set optim\.lrr=1: optim\.lrr: unknown field; did you"):
        load_spec(QUICKSTART, ["optim.lrr=1"])
    with pytest.raises(SpecError, match=r"--set train.loss.stage_weights=\[1\]: train\.loss\.stag"):
        load_spec(QUICKSTART, ["train.loss.stage_weights=[1]"])  # 3 decoder layers


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr", "expected PATH=VALUE"),
        ("=3", "expected PATH=VALUE"),
        ("optim..lr=3", "expected PATH=VALUE"),
        ("optim.lr=[1,", "value is not valid YAML"),
        ("data.train_scales.7=5", "data.train_scales is a list of 3; '7' is not an index"),
        ("optim.lr.x=5", "cannot set inside optim.lr: it is 0.001, not a mapping"),
        ("train.loss.stage_weights.0=2", "train.loss.stage_weights is not a list in this spec"),
        # a path the file does not have is the override's fault, not a line of the file
        ("student.foo.bar=2", "student.foo: unknown field"),
        ("distill.logits.weight=2", "distill.logits: unknown field; allowed: method"),
    ],
)
def test_malformed_overrides(override, message, capsys):
    assert main(["validate", str(QUICKSTART), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --set {override}: ")
    assert message in err


# ----------------------------------------------------------------------------- using a spec
def _spec_with_paths(weights: str, tracking_uri: str | None = None):
    return load_spec_dict(
        {
            "name": "paths",
            "data": {
                "source": {
                    "kind": "coco",
                    "train_images": "coco/train2017",
                    "train_annotations": "coco/annotations/train.json",
                    "val_images": "/data/coco/val2017",
                    "val_annotations": "../ann/val.json",
                }
            },
            "student": {"architecture": "detr", "backbone_weights": "weights/r18.pth"},
            "teacher": {
                "model": {"architecture": "dab_detr", "backbone_weights": "/abs/r50.pth"},
                "weights": weights,
            },
            "mlflow": {"tracking_uri": tracking_uri, "experiment": "kd"},
        }
    )


def test_resolve_paths_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = tmp_path / "project"
    spec = _spec_with_paths("teachers/best.pt", "sqlite:///runs/mlflow.db")
    resolved = resolve_paths(spec, base)
    source = resolved.data.source
    assert source.train_images == str(base / "coco/train2017")
    assert source.train_annotations == str(base / "coco/annotations/train.json")
    assert source.val_images == "/data/coco/val2017"
    assert source.val_annotations == str(tmp_path / "ann/val.json")
    assert resolved.student.backbone_weights == str(base / "weights/r18.pth")
    assert resolved.teacher.model.backbone_weights == "/abs/r50.pth"
    assert resolved.teacher.weights == str(base / "teachers/best.pt")
    assert resolved.mlflow.tracking_uri == f"sqlite:///{base}/runs/mlflow.db"
    assert resolved.mlflow.experiment == "kd"
    assert spec.data.source.train_images == "coco/train2017"  # a copy; the input is unchanged


@pytest.mark.parametrize("weights", ["models:/shapes-teacher/1", "runs:/abc123/model"])
def test_resolve_paths_leaves_uris_alone(weights, tmp_path):
    uri = "sqlite:////srv/mlflow.db"
    resolved = resolve_paths(_spec_with_paths(weights, uri), tmp_path)
    assert resolved.teacher.weights == weights
    assert resolved.mlflow.tracking_uri == uri


def test_resolve_paths_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    resolved = resolve_paths(load_spec(QUICKSTART), tmp_path)
    assert resolved.data.source.cache_dir == str(tmp_path / "data/cache")
    assert resolved.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolved.mlflow.experiment == "quickstart"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_paths(load_spec(QUICKSTART), tmp_path).mlflow.tracking_uri == (
        "http://mlflow:5000"
    )


def test_flatten_params():
    spec = load_spec(QUICKSTART, ["mlflow.experiment=" + "x" * 900])
    params = flatten_params(spec)
    assert params["optim.lr"] == "0.001"
    assert params["student.architecture"] == "deformable_detr"
    assert params["data.source.kind"] == "synthetic"
    assert params["data.train_scales"] == "[96,112,128]"
    assert params["train.loss.stage_weights"] == "None"
    assert params["train.matcher.cost_giou"] == "2.0"
    assert len(params["mlflow.experiment"]) == MAX_PARAM_CHARS
    assert all(isinstance(v, str) for v in params.values())
    assert not any(isinstance(v, dict) for v in params.values())


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_spec_to_yaml_round_trips(path, tmp_path):
    spec = resolve_paths(load_spec(path), tmp_path)
    text = spec_to_yaml(spec)
    assert load_spec_dict(yaml.safe_load(text)) == spec
    assert load_spec(_write(tmp_path, text, "resolved.yaml")) == spec


# ----------------------------------------------------------------------------- schema
def test_schema_command_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    text = json.dumps(schema)
    for architecture in ("detr", "conditional_detr", "dab_detr"):
        assert f'"{architecture}"' in text
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "student"}


def test_schema_command_writes_a_file(tmp_path, capsys):
    out = tmp_path / "sub" / "schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert out.read_text() == schema_json()


def test_committed_schema_is_current():
    committed = (ROOT / "experiments" / "schema.json").read_text()
    assert committed == schema_json(), (
        "experiments/schema.json is stale: run `detrdistill schema --out experiments/schema.json`"
    )
