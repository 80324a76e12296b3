"""Tests for orchestrator.evaluation.pr_curve on hand-made EvalDetails."""

from __future__ import annotations

import math

import pytest

from orchestrator.evaluation.coco import METRIC_NAMES, EvalDetails
from orchestrator.evaluation.pr_curve import (
    TABLE_COLUMNS,
    per_class_markdown,
    per_class_table,
    pr_curve_figure,
)

RECALL = [r / 100 for r in range(101)]


def details() -> EvalDetails:
    """Three classes: label 2 has no ground truth; label 3 has no name in NAMES."""
    return EvalDetails(
        metrics=dict.fromkeys(METRIC_NAMES, 0.5),
        ap={0: 0.25, 1: 0.75, 2: math.nan, 3: 0.5},
        ap50={0: 0.5, 1: 1.0, 2: math.nan, 3: 0.625},
        gt_boxes={0: 4, 1: 7, 2: 0, 3: 1},
        recall=RECALL,
        precision={0.5: [1.0 - r / 2 for r in RECALL], 0.75: [0.5 - r / 2 for r in RECALL]},
    )


NAMES = ["cat", "dog|puppy", "bird"]


def test_per_class_table_is_column_oriented_in_label_order() -> None:
    table = per_class_table(details(), NAMES)
    assert tuple(table) == TABLE_COLUMNS
    assert {len(column) for column in table.values()} == {4}
    assert table["class"] == ["cat", "dog|puppy", "bird", "3"]
    assert table["AP"][:2] == [0.25, 0.75] and math.isnan(table["AP"][2])
    assert table["AP50"][3] == 0.625
    assert table["gt_boxes"] == [4, 7, 0, 1]


def test_per_class_markdown() -> None:
    lines = per_class_markdown(details(), NAMES).splitlines()
    assert len(lines) == 2 + 4
    assert lines[2] == "| cat | 0.250 | 0.500 | 4 |"
    # The pipe in a class name is escaped so the row keeps four cells.
    assert lines[3] == "| dog\\|puppy | 0.750 | 1.000 | 7 |"
    assert lines[4] == "| bird | n/a | n/a | 0 |"


def test_pr_curve_figure_plots_the_curves_and_classes_with_ground_truth() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    fig = pr_curve_figure(details(), NAMES)
    try:
        curves, bars = fig.axes
        plotted = {line.get_label(): list(line.get_ydata()) for line in curves.get_lines()}
        assert plotted == {
            "IoU=0.50 (AP 0.750)": details().precision[0.5],
            "IoU=0.75 (AP 0.250)": details().precision[0.75],
        }
        assert [t.get_text() for t in bars.get_yticklabels()] == ["cat", "dog|puppy", "3"]
    finally:
        plt.close(fig)
