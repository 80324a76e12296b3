"""Figures of a run and a sweep for MLflow: training curves over epochs, and each trial's best
metric against its searched parameters (matplotlib; None where it is missing)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("detrdistill")


def metric_vs_params_figure(rows: list[dict[str, Any]], metric: str) -> Any:
    """A scatter of the best metric of every trial against each searched parameter (numbers on
    a log axis when they span more than a decade, other values as categories)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = sorted({k for r in rows for k in r["params"]})
    scored = [r for r in rows if r["best"] is not None]
    if not names or not scored:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = [r["params"].get(name) for r in scored]
        ys = [r["best"] for r in scored]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            ax.scatter(values, ys)
            positive = [v for v in values if v > 0]
            if len(positive) == len(values) and max(values) > 10 * min(values):
                ax.set_xscale("log")
        else:
            labels = [str(v) for v in values]
            ticks = sorted(set(labels))
            ax.scatter([ticks.index(label) for label in labels], ys)
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, fontsize=7)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel(metric)
    fig.tight_layout()
    return fig


def curves_figure(history: dict[str, list[tuple[int, float]]]) -> Any:
    """Loss, AP and (when present) matching-instability curves over epochs as a matplotlib
    figure (None if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: skipping the curves plot")
        return None
    panels = ["training loss", "validation"]
    if any(key.startswith("stability") for key in history):
        panels.append("matching instability (probe set)")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for key, points in history.items():
        if not points:
            continue
        if key.startswith("stability"):
            ax = axes[2]
        elif key.startswith(("val/", "val_ema/")):
            ax = axes[1]
        else:
            ax = axes[0]
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", label=key)
    for ax, title in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
