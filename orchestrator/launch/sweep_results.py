"""A finished sweep as a table: one row per trial (params, best and last metric, epochs,
status, PBT exploits), best first, and its markdown rendering."""

from __future__ import annotations

import json
import math
from typing import Any


def results_rows(grid: Any, metric: str, mode: str, epochs: int) -> list[dict[str, Any]]:
    """One row per trial (params, last and best metric, epochs, status, PBT exploits), sorted
    by the best metric."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        values: list[float] = []
        exploits = 0
        if frame is not None and metric in frame:
            values = [
                v for v in frame[metric].tolist() if isinstance(v, float) and math.isfinite(v)
            ]
        if frame is not None and "pbt/exploit" in frame:
            exploits = int(frame["pbt/exploit"].fillna(0).sum())
        metrics = result.metrics or {}
        best = (max(values) if mode == "max" else min(values)) if values else None
        rows.append(
            {
                "trial": metrics.get("trial_id") or (result.path or "").rsplit("/", 1)[-1],
                "trial_id": metrics.get("trial_id"),
                "params": {k: v for k, v in (result.config or {}).items() if "." in k},
                "last": values[-1] if values else None,
                "best": best,
                "epochs": int(metrics.get("epoch", 0) or 0),
                "status": "error"
                if result.error
                else "stopped early"
                if int(metrics.get("epoch", 0) or 0) < epochs
                else "done",
                "exploits": exploits,
            }
        )
    sign = -1 if mode == "max" else 1
    # ties go to the trial that trained longest
    rows.sort(key=lambda r: (r["best"] is None, sign * (r["best"] or 0.0), -r["epochs"]))
    return rows


def format_results(rows: list[dict[str, Any]], metric: str) -> str:
    """A markdown table of the trials, best first."""
    names = sorted({k for r in rows for k in r["params"]})
    header = ["trial", *names, f"best {metric}", f"last {metric}", "epochs", "status", "exploits"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return json.dumps(value) if not isinstance(value, str) else value

    for r in rows:
        values = [r["trial"], *(r["params"].get(n) for n in names), r["best"], r["last"]]
        values += [r["epochs"], r["status"], r["exploits"]]
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines)
