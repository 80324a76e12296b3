"""OD-DETR in the spec, the export choice, and the matching-instability arithmetic."""

import itertools

import pytest

from distill.config import ODDETRConfig
from orchestrator.evaluation.stability import assignment_agreement, compare_assignments
from orchestrator.launch.export import export_choice
from orchestrator.spec.loader import load_spec_dict
from orchestrator.spec.params import flatten_params
from orchestrator.spec.problems import SpecError

TEACHER = {
    "model": {"architecture": "dab_detr", "decoder_layers": 3},
    "weights": "teacher.pt",
}


def spec(distill, **extra):
    return load_spec_dict(
        {
            "name": "t",
            "student": {"architecture": "dab_detr", "decoder_layers": 2},
            "distill": distill,
            **extra,
        },
        source="test",
    )


def test_od_detr_defaults_and_dotted_overrides():
    s = spec({"method": "od_detr"}, checkpoint={"export": "ema"})
    config = s.distill  # the spec section is the config OD-DETR reads
    assert isinstance(config, ODDETRConfig)
    assert config.ema.decay == 0.9997 and config.ema.warmup
    assert config.matching.classification == "quality_focal"
    assert (config.initial_query.cls, config.initial_query.bbox, config.initial_query.giou) == (
        1,
        5,
        2,
    )
    groups = config.aux_groups
    assert groups.cls == 2 and groups.queries_per_gt == 2 and groups.grouping == "per_stage"
    tuned = load_spec_dict(
        s.model_dump(mode="json"),
        source="test",
        overrides=[
            "distill.aux_groups.weight=0.5",
            "distill.matching.classification=focal",
            "distill.initial_query.schedule.kind=warmup",
            "distill.ema.decay=0.999",
        ],
    )
    config = tuned.distill
    assert config.aux_groups.weight == 0.5 and config.matching.classification == "focal"
    assert config.initial_query.schedule.kind == "warmup" and config.ema.decay == 0.999
    params = flatten_params(tuned)
    assert params["distill.aux_groups.weight"] == "0.5"


def test_combined_method_and_its_field_paths():
    s = spec({"method": "detrdistill+od_detr"}, teacher=TEACHER)
    assert s.distill.detrdistill.logits.weight == 1 and s.distill.od_detr.ema.decay == 0.9997
    with pytest.raises(SpecError) as err:
        spec(
            {
                "method": "detrdistill+od_detr",
                "detrdistill": {"logits": {"stage_weights": [1]}},
                "od_detr": {"aux_groups": {"stage_weights": [1, 2, 3]}},
            },
            teacher=TEACHER,
        )
    text = str(err.value)
    assert "distill.detrdistill.logits.stage_weights" in text
    assert "distill.od_detr.aux_groups.stage_weights" in text


def test_scoring_by_the_ema_needs_an_ema():
    with pytest.raises(SpecError, match=r"checkpoint\.score_metric"):
        spec({"method": "none"}, checkpoint={"score_metric": "val_ema/AP"})
    ok = spec({"method": "od_detr"}, checkpoint={"score_metric": "val_ema/AP"})
    assert ok.checkpoint.score_metric == "val_ema/AP"


def test_export_choice():
    scores = {"val/AP": 0.30, "val_ema/AP": 0.35}
    assert export_choice("best", scores, has_ema=True) == "ema"
    assert export_choice("best", {"val/AP": 0.4, "val_ema/AP": 0.35}, has_ema=True) == "student"
    assert export_choice("student", scores, has_ema=True) == "student"
    assert export_choice("ema", {"val/AP": 0.9, "val_ema/AP": 0.1}, has_ema=True) == "ema"
    assert export_choice("best", scores, has_ema=False) == "student"
    with pytest.raises(ValueError, match="no EMA model"):
        export_choice("ema", scores, has_ema=False)


def test_instability_over_a_hand_made_sequence():
    # one image with GTs 0, 1, 2; slot -> GT per epoch
    epochs = [
        {7: {0: 0, 1: 1, 2: 2}},
        {7: {0: 0, 1: 1, 2: 2}},  # nothing moved
        {7: {0: 1, 1: 0, 2: 2}},  # slots 0 and 1 swapped GTs: 2 slots, 2 of 3 GTs flipped
        {7: {0: 1, 1: 0, 5: 2}},  # GT 2 moved from slot 2 to slot 5: 2 slots, 1 GT
        {7: {0: 1, 1: 0}},  # GT 2 lost its slot: 1 slot, 1 GT
    ]
    results = [compare_assignments(a, b) for a, b in itertools.pairwise(epochs)]
    assert [r["instability"] for r in results] == [0, 2, 2, 1]
    assert [r["gt_flip_rate"] for r in results] == pytest.approx([0, 2 / 3, 1 / 3, 1 / 3])
    # averaged per image: a second, unchanged image halves the slot count
    two = compare_assignments({1: {0: 0}, 2: {0: 0}}, {1: {3: 0}, 2: {0: 0}})
    assert two["instability"] == 1.0 and two["gt_flip_rate"] == 0.5


def test_teacher_agreement():
    student = {1: {0: 0, 1: 1}, 2: {4: 0}}
    teacher = {1: {0: 0, 2: 1}, 2: {4: 0}}
    assert assignment_agreement(student, teacher) == pytest.approx(2 / 3)
    assert assignment_agreement(student, student) == 1.0
    assert assignment_agreement({}, teacher) == 1.0
