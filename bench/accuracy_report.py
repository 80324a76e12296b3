"""Tables with intervals from the accuracy benchmark's runs.

Two kinds of uncertainty, both reported:
- seeds: the spread of the per-seed difference (method seed s minus baseline seed s), as a
  Student-t 95% interval of the mean over seeds;
- validation images: the paired bootstrap over the validation images (the same draws for every
  run), of the seed-mean difference, and of each single run's AP.
An effect is called significant when both intervals exclude zero, on the same side.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path

import numpy as np
from scipy import stats

from bench.common import mean_std
from orchestrator.evaluation.bootstrap import ImageMatches, bootstrap_ap, draws, interval

DRAWS = 1000


def _matches(result: dict, coco) -> ImageMatches:
    detections = json.loads(Path(result["detections"]).read_text())
    return ImageMatches.from_detections(coco, detections)


def _t_interval(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    mean, sem = statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5
    half = stats.t.ppf(0.975, len(values) - 1) * sem
    return mean - half, mean + half


def _span(low: float, high: float) -> str:
    return f"[{low:+.3f}, {high:+.3f}]"


def _verdict(t_low: float, t_high: float, b_low: float, b_high: float) -> str:
    if min(t_low, b_low) > 0:
        return "yes, gain"
    if max(t_high, b_high) < 0:
        return "yes, loss"
    return "no"


def _instability(group: list[dict]) -> str:
    return mean_std([statistics.mean(r["instability"]) for r in group if r["instability"]])


def build_tables(variants, teacher: dict, runs: dict[str, list[dict]]) -> dict:
    """The result tables (caption -> (header, rows)) and target rows of a suite."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(teacher["annotations"])
    weights = draws(len(coco.getImgIds()), DRAWS, seed=0)
    order = [("teacher", [teacher])] + [(v.tag, runs[v.tag]) for v in variants]
    boot: dict[str, np.ndarray] = {}  # tag -> [seeds, draws]
    for tag, group in order:
        boot[tag] = bootstrap_ap([_matches(r, coco) for r in group], weights)
    main_rows, seed_rows, targets = [], [], []
    for tag, group in order:
        variant = next((v for v in variants if v.tag == tag), None)
        base = variant.baseline if variant is not None else None
        aps = [r["final"]["val/AP"] for r in group]
        row = [
            tag,
            variant.group if variant else "teacher",
            len(group),
            mean_std(aps),
            mean_std([r["final"]["val/AP50"] for r in group]),
            mean_std([r["final"]["val_ema/AP"] for r in group if "val_ema/AP" in r["final"]]),
        ]
        if base is None:
            low, high = interval(boot[tag].mean(axis=0), statistics.mean(aps))
            row += [f"AP {_span(low, high).replace('+', '')}", "-", "-", "-", "-"]
        else:
            base_by_seed = {r["seed"]: (i, r) for i, r in enumerate(runs[base])}
            pairs = [
                (i, r, *base_by_seed[r["seed"]])
                for i, r in enumerate(group)
                if r["seed"] in base_by_seed
            ]
            deltas = [r["final"]["val/AP"] - b["final"]["val/AP"] for _, r, _, b in pairs]
            mean_delta = np.mean([boot[tag][i] - boot[base][j] for i, _, j, _ in pairs], axis=0)
            t_low, t_high = _t_interval(deltas)
            b_low, b_high = interval(mean_delta, statistics.mean(deltas))
            verdict = _verdict(t_low, t_high, b_low, b_high)
            row += [
                " / ".join(f"{d:+.3f}" for d in deltas),
                mean_std(deltas),
                _span(t_low, t_high),
                _span(b_low, b_high),
                verdict,
            ]
            targets.append(
                {
                    "target": f"{tag} vs {base}: AP difference (no target: reported)",
                    "measured": f"{statistics.mean(deltas):+.3f} (seeds {_span(t_low, t_high)}, "
                    f"images {_span(b_low, b_high)})",
                    "status": f"significant: {verdict}",
                }
            )
        row += [
            _instability(group),
            f"{statistics.mean(r['minutes'] for r in group):.1f}",
            base or "-",
        ]
        main_rows.append(row)
        for i, r in enumerate(group):
            low, high = interval(boot[tag][i], r["final"]["val/AP"])
            ema = r["final"].get("val_ema/AP")
            seed_rows.append(
                [
                    tag,
                    r["seed"],
                    f"{r['final']['val/AP']:.3f}",
                    f"[{low:.3f}, {high:.3f}]",
                    f"{r['final']['val/AP50']:.3f}",
                    "-" if ema is None else f"{ema:.3f}",
                    f"{statistics.mean(r['instability']):.3f}" if r["instability"] else "-",
                ]
            )
    header = [
        "model",
        "group",
        "seeds",
        "AP",
        "AP50",
        "EMA AP",
        "delta AP per seed",
        "delta AP",
        "95% over seeds",
        "95% over val images",
        "significant",
        "mean instability",
        "minutes per run",
        "against",
    ]
    # the teacher and baselines: their own AP interval stands in the delta columns
    tables = {
        "Final epoch, mean +- std over seeds; delta AP against the row's baseline (same seed). "
        "Intervals: Student-t over seeds, and the paired bootstrap over validation images "
        f"({DRAWS} draws, basic interval) of the seed-mean delta; for a baseline, its AP's:": (
            header,
            main_rows,
        ),
        "Per run: AP with its bootstrap 95% interval over validation images:": (
            ["model", "seed", "AP", "95% over val images", "AP50", "EMA AP", "mean instability"],
            seed_rows,
        ),
    }
    return {"tables": tables, "targets": targets}
