import torch

from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.matcher import HungarianMatcher
from orchestrator.evaluation.stability import MatchingStability, compare_assignments
from tests.overfit import shapes_batch


def test_compare_counts_changed_slots_and_flipped_boxes():
    before = {1: {0: 0, 3: 1}, 2: {5: 0}}
    after = {1: {0: 0, 4: 1}, 2: {5: 0}}
    metrics = compare_assignments(before, after)
    # image 1: slot 3 lost box 1 and slot 4 gained it (2 slots); image 2 unchanged
    assert metrics["instability"] == 1.0
    assert metrics["gt_flip_rate"] == 1 / 3
    assert compare_assignments(after, after) == {"instability": 0.0, "gt_flip_rate": 0.0}


def test_measure_is_zero_for_an_unchanged_model_and_positive_after_a_change(tmp_path):
    torch.manual_seed(0)
    _, batch = shapes_batch(tmp_path, count=4)
    for arch, extra in (
        ("detr", {}),
        ("deformable_detr", {"two_stage": True, "levels": ["C3", "C4", "C5"]}),
    ):
        model = build_model(tiny_config(arch, **extra))
        tracker = MatchingStability([batch])
        first = tracker.measure(model, HungarianMatcher(), torch.device("cpu"))
        assert set(first) == {"stability/cross_stage_consistency"}
        assert 0 <= first["stability/cross_stage_consistency"] <= 1
        again = tracker.measure(model, HungarianMatcher(), torch.device("cpu"))
        assert again["stability/instability"] == 0 and again["stability/gt_flip_rate"] == 0
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        moved = tracker.measure(model, HungarianMatcher(), torch.device("cpu"))
        assert moved["stability/instability"] > 0 and moved["stability/gt_flip_rate"] > 0
        restored = MatchingStability([batch])
        restored.load_state_dict(tracker.state_dict())
        assert (
            restored.measure(model, HungarianMatcher(), torch.device("cpu"))[
                "stability/instability"
            ]
            == 0
        )
