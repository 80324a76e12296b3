"""A Hugging Face teacher in a spec: `teacher: {hf: ..., classes: ...}` parsed, classes matched
by name / map / partially, what the terms need checked with errors naming the term and the
teacher class, and a one-epoch DETRDistill run through the real loop for every supported class."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bench.local_training import train_local
from distill.hf_families import FEATURES, STAGES
from orchestrator.errors import UserInputError
from orchestrator.launch.run import preflight
from orchestrator.spec.loader import load_spec_dict
from orchestrator.spec.problems import SpecError
from orchestrator.spec.sections import HfTeacherSpec
from orchestrator.training import hf_teacher_source
from orchestrator.training.teacher_classes import teacher_class_match
from tests.hf_teachers import KINDS

# a tiny Deformable student: strides 8, 16, 32, 64 share a level with every teacher
STUDENT = {
    "architecture": "deformable_detr",
    "backbone": "tiny",
    "tiny_width": 8,
    "levels": ["C3", "C4", "C5"],
    "num_feature_levels": 4,
    "hidden_dim": 32,
    "num_heads": 4,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "ffn_dim": 64,
    "num_queries": 10,
    "dropout": 0.0,
    "box_refine": True,
}
SYNONYMS = {"circle": "cat", "square": "dog"}  # triangle has no teacher counterpart
TERMS = ["distill_logits_cls_s0", "distill_logits_giou_s1", "distill_feature_s0"]
PRIOR = ["distill_prior_loss_cls_s0", "distill_prior_loss_bbox_s1"]


@pytest.fixture(scope="module")
def folders(hf_teacher_folders):
    return hf_teacher_folders


def _spec(tiny_spec, tmp_path, folder, classes=SYNONYMS, **overrides):
    teacher = {"hf": str(folder)} | ({"classes": classes} if classes is not None else {})
    return tiny_spec(
        tmp_path,
        epochs=1,
        register_as=None,
        **{
            "student": STUDENT,
            "teacher": teacher,
            "distill": {"method": "detrdistill"},
            "train.max_iters_per_epoch": 2,
            "train.stability_probe_images": 0,
            **overrides,
        },
    )


# ----------------------------------------------------------------------------- spec
def test_the_spec_reads_an_hf_teacher(tmp_path, tiny_spec_dict, folders):
    data = tiny_spec_dict(tmp_path, teacher={"hf": "ustc-community/dfine-xlarge-obj2coco"})
    data["distill"] = {"method": "detrdistill"}
    spec = load_spec_dict(data)
    assert isinstance(spec.teacher, HfTeacherSpec)
    assert spec.teacher.source == "ustc-community/dfine-xlarge-obj2coco"
    assert spec.teacher.precision == "fp32" and spec.teacher.classes is None


def test_a_misspelt_hf_teacher_field_is_named(tmp_path, tiny_spec_dict):
    data = tiny_spec_dict(tmp_path, teacher={"hf": "org/name", "clases": {"a": "b"}})
    data["distill"] = {"method": "detrdistill"}
    with pytest.raises(SpecError, match=r"teacher\.clases: unknown field; did you mean .classes."):
        load_spec_dict(data)


# ----------------------------------------------------------------------------- classes
COCO = ["person", "bicycle", "car", "motorcycle", "N/A", "dog", "cat"]


def test_classes_match_by_name_case_insensitively():
    assert teacher_class_match(COCO, ["Cat", "dog", "person"], None) == [6, 5, 0]


def test_classes_match_through_the_map():
    assert teacher_class_match(COCO, ["kitty", "bike"], {"kitty": "cat", "bike": "bicycle"}) == [
        6,
        1,
    ]


def test_a_partial_overlap_leaves_the_others_without_a_teacher():
    assert teacher_class_match(COCO, ["cat", "zebra"], None) == [6, None]


def test_the_teacher_own_classes_need_no_mapping():
    assert teacher_class_match(["a", "b"], ["a", "b"], None) is None
    assert teacher_class_match(["LABEL_0", "LABEL_1"], ["x", "y"], None) is None


def test_no_overlap_lists_both_class_lists():
    with pytest.raises(UserInputError, match=r"none of the dataset classes \['zebra'\].*person"):
        teacher_class_match(COCO, ["zebra"], None)


def test_a_map_naming_unknown_classes_is_refused():
    with pytest.raises(UserInputError, match=r"teacher.classes: \['kitty'\] are not dataset"):
        teacher_class_match(COCO, ["cat"], {"kitty": "cat"})
    with pytest.raises(UserInputError, match=r"teacher.classes: \['puma'\] are not teacher"):
        teacher_class_match(COCO, ["cat"], {"cat": "puma"})


def test_preflight_refuses_a_teacher_sharing_no_class(tmp_path, tiny_spec, folders):
    spec = _spec(tiny_spec, tmp_path, folders["d_fine"], classes=None)  # cat, dog... vs shapes
    with pytest.raises(UserInputError, match=r"none of the dataset classes.*cat"):
        preflight(spec)


# ----------------------------------------------------------------------------- terms
def test_a_term_the_teacher_cannot_serve_names_the_term_and_class(
    tmp_path, tiny_spec, folders, monkeypatch
):
    original = hf_teacher_source.HfTeacher._probe

    def without_queries(self):
        return dataclasses.replace(original(self), provides=frozenset({STAGES, FEATURES}))

    monkeypatch.setattr(hf_teacher_source.HfTeacher, "_probe", without_queries)
    spec = _spec(tiny_spec, tmp_path, folders["lw_detr"])
    with pytest.raises(
        UserInputError,
        match=r"distill.query_prior: the teacher LwDetrForObjectDetection does not provide "
        r"initial queries; set distill.query_prior.enabled: false",
    ):
        preflight(spec)
    off = _spec(tiny_spec, tmp_path, folders["lw_detr"], **{"distill.query_prior.enabled": False})
    preflight(off)  # the other terms run


def test_no_common_feature_level_names_the_teacher_class(tmp_path, tiny_spec, folders):
    student = STUDENT | {"levels": ["C3"], "num_feature_levels": 1}  # stride 8 only
    spec = _spec(tiny_spec, tmp_path, folders["rf_detr"], student=student)  # stride 16 only
    with pytest.raises(
        UserInputError, match=r"distill.feature: .*RfDetrForObjectDetection's \(\[16\]\)"
    ):
        preflight(spec)


def test_a_folder_that_is_not_a_model_is_refused(tmp_path, tiny_spec):
    spec = _spec(tiny_spec, tmp_path, "no such folder!")
    with pytest.raises(UserInputError, match=r"teacher\.hf: no such folder! is neither a model"):
        preflight(spec)


# ----------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("kind", KINDS)
def test_detrdistill_from_an_hf_teacher_runs_through_the_loop(kind, tmp_path, tiny_spec, folders):
    spec = _spec(
        tiny_spec,
        tmp_path,
        folders[kind],
        **{"distill.query_prior.enabled": True},
    )
    reporter = train_local(spec, tmp_path / "out")
    (last,) = reporter.history
    logged = {"distill_" + k.removeprefix("distill/") for k in last if k.startswith("distill/")}
    assert set(TERMS + PRIOR) <= logged
    assert [k for k, v in last.items() if not math.isfinite(v)] == []
    assert last["distill/logits_cls_s0"] > 0
