"""Tests for detr_models.matcher: optimality, batching, empty images and robustness."""

from __future__ import annotations

import itertools

import pytest
import torch

from detr_models.box_ops import inverse_sigmoid, safe_pairwise_giou
from detr_models.matcher import HungarianMatcher


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """`[n, 4]` valid normalised cxcywh boxes."""
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def random_problem(
    batch: int, queries: int, classes: int, sizes: list[int], seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=g) * 2  # [B, Q, C]
    boxes = torch.stack([random_boxes(queries, g) for _ in range(batch)])  # [B, Q, 4]
    targets = [
        {"boxes": random_boxes(m, g), "labels": torch.randint(0, classes, (m,), generator=g)}
        for m in sizes
    ]
    return logits, boxes, targets


def assignment_cost(cost: torch.Tensor, query_idx: torch.Tensor, target_idx: torch.Tensor) -> float:
    return float(cost.double()[query_idx, target_idx].sum())


def brute_force_cost(cost: torch.Tensor) -> float:
    """The least total cost over every injective map of targets (columns) to queries (rows)."""
    num_queries, num_targets = cost.shape
    cost = cost.double()
    best = float("inf")
    for rows in itertools.permutations(range(num_queries), num_targets):
        best = min(best, float(cost[list(rows), list(range(num_targets))].sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    queries = int(torch.randint(1, 6, (1,), generator=g))
    sizes = [int(torch.randint(0, min(queries, 3) + 1, (1,), generator=g)) for _ in range(3)]
    logits, boxes, targets = random_problem(3, queries, 4, sizes, seed)
    matcher = HungarianMatcher()
    indices = matcher(logits, boxes, targets)
    costs = matcher.cost_matrices(logits, boxes, targets)
    for (query_idx, target_idx), cost, size in zip(indices, costs, sizes, strict=True):
        assert len(query_idx) == len(target_idx) == size
        if size:
            assert assignment_cost(cost, query_idx, target_idx) == pytest.approx(
                brute_force_cost(cost), rel=1e-9, abs=1e-9
            )


def test_more_targets_than_queries_matches_every_query() -> None:
    logits, boxes, targets = random_problem(1, 2, 3, [4], seed=3)
    matcher = HungarianMatcher()
    ((query_idx, target_idx),) = matcher(logits, boxes, targets)
    cost = matcher.cost_matrices(logits, boxes, targets)[0]
    assert query_idx.tolist() == [0, 1]
    assert assignment_cost(cost, query_idx, target_idx) == pytest.approx(
        brute_force_cost(cost.T), rel=1e-9
    )


def test_batched_equals_per_image() -> None:
    sizes = [3, 0, 7, 1]
    logits, boxes, targets = random_problem(4, 12, 5, sizes, seed=7)
    matcher = HungarianMatcher()
    batched = matcher(logits, boxes, targets)
    for b, target in enumerate(targets):
        ((query_idx, target_idx),) = matcher(logits[b : b + 1], boxes[b : b + 1], [target])
        assert torch.equal(batched[b][0], query_idx)
        assert torch.equal(batched[b][1], target_idx)


def test_output_format_sorted_int64_cpu() -> None:
    logits, boxes, targets = random_problem(2, 10, 3, [4, 6], seed=1)
    for query_idx, target_idx in HungarianMatcher()(logits, boxes, targets):
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert query_idx.device.type == target_idx.device.type == "cpu"
        assert torch.equal(query_idx, query_idx.sort().values)
        assert len(set(query_idx.tolist())) == len(query_idx)
        assert len(set(target_idx.tolist())) == len(target_idx)


def test_obvious_match_is_found() -> None:
    # Query 2 is an exact, confident copy of target 0 and query 0 of target 1.
    tgt_boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])
    boxes = torch.tensor([[[0.7, 0.6, 0.3, 0.4], [0.1, 0.9, 0.05, 0.05], [0.3, 0.3, 0.2, 0.2]]])
    logits = torch.full((1, 3, 2), -8.0)
    logits[0, 2, 1] = 8.0
    logits[0, 0, 0] = 8.0
    targets = [{"boxes": tgt_boxes, "labels": torch.tensor([1, 0])}]
    ((query_idx, target_idx),) = HungarianMatcher()(logits, boxes, targets)
    assert query_idx.tolist() == [0, 2]
    assert target_idx.tolist() == [1, 0]


@pytest.mark.parametrize("sizes", [[0, 0, 0], [2, 0, 3]])
def test_images_without_targets(sizes: list[int]) -> None:
    logits, boxes, targets = random_problem(3, 6, 3, sizes, seed=2)
    matcher = HungarianMatcher()
    indices = matcher(logits, boxes, targets)
    for (query_idx, target_idx), size in zip(indices, sizes, strict=True):
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == len(target_idx) == size
    costs = matcher.cost_matrices(logits, boxes, targets)
    assert [tuple(c.shape) for c in costs] == [(6, m) for m in sizes]


def test_cost_matrices_shapes_and_values() -> None:
    sizes = [2, 5]
    logits, boxes, targets = random_problem(2, 7, 3, sizes, seed=4)
    costs = HungarianMatcher().cost_matrices(logits, boxes, targets)
    assert [tuple(c.shape) for c in costs] == [(7, 2), (7, 5)]
    assert all(torch.isfinite(c).all() for c in costs)
    # Recompute one image's L1-only cost directly to check the batch split lines up.
    l1_only = HungarianMatcher(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0)
    cost = l1_only.cost_matrices(logits, boxes, targets)[1]
    expected = (boxes[1][:, None, :] - targets[1]["boxes"][None, :, :]).abs().sum(-1)
    torch.testing.assert_close(cost, expected)


def test_nan_and_degenerate_boxes_do_not_raise() -> None:
    logits, boxes, targets = random_problem(2, 6, 3, [3, 2], seed=5)
    boxes[0, 1] = float("nan")
    boxes[0, 3, 2:] = 0.0  # zero-area box
    boxes[1] = float("nan")  # a whole image of NaN predictions
    logits[1, 0] = float("nan")
    matcher = HungarianMatcher()
    indices = matcher(logits, boxes, targets)
    assert [len(q) for q, _ in indices] == [3, 2]
    # Valid queries are preferred over NaN ones whenever there are enough of them.
    assert 1 not in indices[0][0].tolist()
    assert all(torch.isfinite(c).all() for c in matcher.cost_matrices(logits, boxes, targets))


def test_half_precision_inputs() -> None:
    logits, boxes, targets = random_problem(2, 5, 3, [2, 3], seed=6)
    matcher = HungarianMatcher()
    full = matcher(logits, boxes, targets)
    half = matcher(logits.bfloat16(), boxes.bfloat16(), targets)
    assert [len(q) for q, _ in half] == [len(q) for q, _ in full]


def test_bad_inputs_raise() -> None:
    logits, boxes, targets = random_problem(2, 5, 3, [2, 3], seed=0)
    matcher = HungarianMatcher()
    with pytest.raises(ValueError, match="targets"):
        matcher(logits, boxes, targets[:1])
    with pytest.raises(ValueError, match=r"\[B, Q, 4\]"):
        matcher(logits, boxes[:, :4], targets)
    targets[1]["labels"] = torch.tensor([0, 3, 1])
    with pytest.raises(ValueError, match="labels"):
        matcher(logits, boxes, targets)


def test_box_ops_helpers() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    y = inverse_sigmoid(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1:4].sigmoid(), x[1:4])
    degenerate = torch.tensor([[0.5, 0.5, 0.5, 0.5], [float("nan")] * 4])
    giou = safe_pairwise_giou(degenerate, degenerate)
    assert giou.shape == (2, 2) and torch.isfinite(giou).all()
    assert safe_pairwise_giou(degenerate, degenerate[:0]).shape == (2, 0)


def test_large_assignments_on_threads_match_the_serial_solver():
    from detr_models.matcher import PARALLEL_MIN_SIZE, solve_assignment, solve_assignments

    torch.manual_seed(0)
    costs = [torch.rand(120, 100) for _ in range(5)] + [torch.zeros(120, 0)]
    assert costs[0].numel() >= PARALLEL_MIN_SIZE  # the threaded path
    for (q1, t1), (q2, t2) in zip(
        solve_assignments(costs), [solve_assignment(c) for c in costs], strict=True
    ):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)
