"""A teacher restricted to the dataset's classes gives exactly its own scores for them."""

from __future__ import annotations

import pytest
import torch

from detr_models.build import build_model
from detr_models.class_subset import restrict_classes
from detr_models.config import tiny_config
from orchestrator.errors import UserInputError
from orchestrator.training.teacher_classes import teacher_class_index


@pytest.mark.parametrize(
    "overrides",
    [
        {"architecture": "deformable_detr", "box_refine": True},
        {"architecture": "deformable_detr", "two_stage": True, "box_refine": True},
        {"architecture": "detr", "class_head": "softmax"},
        {"architecture": "conditional_detr"},
    ],
)
def test_restricted_classes_keep_their_scores(overrides):
    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=6, **overrides)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images).logits.sigmoid()
        index = [4, 0, 2]
        restrict_classes(model, index)
        after = model(images).logits.sigmoid()
    assert model.num_classes == 3 and after.shape[-1] == 3
    assert torch.allclose(after, before[..., index], atol=1e-6)


def test_teacher_classes_are_matched_by_name_or_by_the_map():
    coco = ["N/A", "person", "bicycle", "car", "Dog"]
    assert teacher_class_index(coco, 5, ["dog", "person"], None) == [4, 1]
    assert teacher_class_index(coco, 5, ["puppy", "car"], {"puppy": "dog"}) == [4, 3]
    assert teacher_class_index(["LABEL_0", "LABEL_1"], 2, ["a", "b"], None) is None
    assert teacher_class_index(["a", "b"], 2, ["a", "b"], None) is None
    assert teacher_class_index(["b", "a"], 2, ["a", "b"], None) == [1, 0]


def test_unmappable_teacher_classes_name_both_lists():
    with pytest.raises(UserInputError) as info:
        teacher_class_index(["person", "car"], 2, ["person", "zebra", "tree"], None)
    message = str(info.value)
    assert "zebra" in message and "tree" in message
    assert "['person', 'zebra', 'tree']" in message and "['person', 'car']" in message
    assert "teacher.class_map" in message
    with pytest.raises(UserInputError, match="not dataset classes"):
        teacher_class_index(["person"], 1, ["person", "x"], {"cat": "person"})
    with pytest.raises(UserInputError, match="names none"):
        teacher_class_index(None, 91, ["person"], None)


def test_a_softmax_student_is_refused_at_validation(tmp_path, tiny_spec_dict):
    from orchestrator.spec.loader import load_spec_dict

    data = tiny_spec_dict(tmp_path, **{"student.class_head": "softmax"})
    with pytest.raises(UserInputError, match=r"student\.class_head"):
        load_spec_dict(data, source="test")
