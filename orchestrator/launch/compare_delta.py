"""How far one comparison's AP differences can be trusted: the paired bootstrap over the
validation images (orchestrator.evaluation.bootstrap) of each distilled student against the
baseline, printed under the table."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from orchestrator.evaluation.bootstrap import ImageMatches, draws, paired_interval
from orchestrator.launch.inference import evaluate_model

SEED_NOTE = (
    "One training seed: these intervals count which validation images were drawn, not the "
    "seed-to-seed spread of training, which one run cannot measure; the accuracy benchmark "
    "(python -m bench.accuracy) trains each student with several seeds."
)


def _matches(source: str, images: Path, annotations: Path, uri: str | None, coco: COCO):
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "detections.json"
        evaluate_model(source, images, annotations, uri, results=file, quiet=True)
        return ImageMatches.from_detections(coco, json.loads(file.read_text()))


def delta_lines(
    rows: Sequence[Any], images: Path, annotations: Path, uri: str | None, count: int = 1000
) -> list[dict[str, Any]]:
    """For each distilled row with a model: {role, delta, low, high, significant, line}
    against the `baseline` row (none without a baseline)."""
    baseline = next((r for r in rows if r.role == "baseline" and r.model), None)
    others = [r for r in rows if r.role.startswith("distilled") and r.model]
    if baseline is None or not others:
        return []
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it loads
        coco = COCO(str(annotations))
    base = _matches(baseline.model, images, annotations, uri, coco)
    weights = draws(len(base.image_ids), count)
    out = []
    for row in others:
        delta, (low, high) = paired_interval(
            _matches(row.model, images, annotations, uri, coco), base, weights
        )
        significant = low > 0 or high < 0
        verdict = "significant" if significant else "includes 0: not significant"
        out.append(
            {
                "role": row.role,
                "delta": delta,
                "low": low,
                "high": high,
                "significant": significant,
                "line": f"{row.role} - baseline: AP {delta:+.3f}, 95% interval over the "
                f"{len(base.image_ids)} validation images [{low:+.3f}, {high:+.3f}], {verdict}",
            }
        )
    return out
