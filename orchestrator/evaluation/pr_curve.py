"""Views of a detailed COCO evaluation (EvalDetails): the precision-recall figure and the
per-class AP table, for MLflow artifacts and the console."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from orchestrator.evaluation.coco import PR_IOUS, EvalDetails
from orchestrator.evaluation.drawing import label_text

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("class", "AP", "AP50", "gt_boxes")


def pr_curve_figure(details: EvalDetails, class_names: Sequence[str]) -> Any:
    """A matplotlib figure (None if matplotlib is missing): class-averaged precision against
    recall at IoU .50 and .75 on the left, AP and AP50 per class on the right (classes without
    ground truth are left out)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: skipping the precision-recall plot")
        return None
    labels = [k for k in sorted(details.ap) if not math.isnan(details.ap[k])]
    # The bar panel grows with the class count so names stay legible.
    height = max(4.0, 0.25 * len(labels) + 1.0)
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, height))
    for iou in PR_IOUS:
        precision = details.precision[iou]
        mean = _nanmean(precision)
        name = f"IoU={iou:.2f}" + ("" if math.isnan(mean) else f" (AP {mean:.3f})")
        curves.plot(details.recall, precision, label=name)
    curves.set_xlim(0.0, 1.0)
    curves.set_ylim(0.0, 1.05)
    curves.set_xlabel("recall")
    curves.set_ylabel("precision")
    curves.set_title("precision-recall, mean over classes")
    curves.legend(loc="lower left")
    curves.grid(alpha=0.3)

    rows = range(len(labels))
    bars.barh([r + 0.2 for r in rows], [details.ap50[k] for k in labels], 0.4, label="AP50")
    bars.barh([r - 0.2 for r in rows], [details.ap[k] for k in labels], 0.4, label="AP")
    bars.set_yticks(list(rows), [label_text(k, class_names) for k in labels], fontsize=8)
    bars.invert_yaxis()  # label 0 at the top, like the table
    bars.set_xlim(0.0, 1.0)
    bars.set_title("AP per class")
    bars.legend(loc="lower right")
    fig.tight_layout()
    return fig


def per_class_table(details: EvalDetails, class_names: Sequence[str]) -> dict[str, list]:
    """One row per class in label order, column-oriented for ``mlflow.log_table(data=...)``:
    ``class`` (name), ``AP``, ``AP50`` (NaN for a class without ground truth) and
    ``gt_boxes``."""
    labels = sorted(details.ap)
    return {
        "class": [label_text(k, class_names) for k in labels],
        "AP": [details.ap[k] for k in labels],
        "AP50": [details.ap50[k] for k in labels],
        "gt_boxes": [details.gt_boxes.get(k, 0) for k in labels],
    }


def per_class_markdown(details: EvalDetails, class_names: Sequence[str]) -> str:
    """per_class_table as a Markdown table; APs with 3 decimals, ``n/a`` for a class without
    ground truth."""
    table = per_class_table(details, class_names)
    lines = ["| class | AP | AP50 | gt_boxes |", "|---|---:|---:|---:|"]
    for name, ap, ap50, count in zip(*(table[c] for c in TABLE_COLUMNS), strict=True):
        cell = name.replace("|", "\\|")  # a bare '|' in a class name would split the row
        lines.append(f"| {cell} | {_shown(ap)} | {_shown(ap50)} | {count} |")
    return "\n".join(lines)


def _shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
