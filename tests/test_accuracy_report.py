"""The accuracy benchmark's report: deltas by seed, both intervals and the verdict, from real
detection files; and a stored run is reused only for the same spec, seed and overrides."""

from __future__ import annotations

import json

import numpy as np

from bench.accuracy_full import Variant
from bench.accuracy_report import build_tables
from bench.accuracy_runs import RESULT, cached
from tests.test_bootstrap import _detections, _ground_truth


def _run(tmp_path, coco, tag, seed, noise, annotations) -> dict:
    rng = np.random.default_rng(seed * 100 + int(noise * 1000))
    file = tmp_path / f"{tag}-{seed}.json"
    file.write_text(json.dumps(_detections(coco, rng, noise)))
    from pycocotools.cocoeval import COCOeval

    evaluation = COCOeval(coco, coco.loadRes(str(file)), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    ap, ap50 = evaluation.stats[:2]
    return {
        "seed": seed,
        "minutes": 1.0,
        "final": {"val/AP": ap, "val/AP50": ap50},
        "instability": [0.5, 0.3],
        "detections": str(file),
        "annotations": annotations,
    }


def test_a_better_method_is_significant_and_an_equal_one_is_not(tmp_path) -> None:
    coco = _ground_truth(150, np.random.default_rng(0))
    annotations = tmp_path / "gt.json"
    annotations.write_text(json.dumps(coco.dataset))
    variants = (
        Variant("baseline", "b.yaml", baseline=None),
        Variant("better", "x.yaml"),
        Variant("same", "y.yaml"),
    )
    runs = {
        "baseline": [
            _run(tmp_path, coco, "baseline", s, 0.12, str(annotations)) for s in (0, 1, 2)
        ],
        "better": [_run(tmp_path, coco, "better", s, 0.03, str(annotations)) for s in (0, 1, 2)],
        "same": [_run(tmp_path, coco, "same", s, 0.12, str(annotations)) for s in (3, 4, 5)],
    }
    for seed, r in zip((0, 1, 2), runs["same"], strict=True):
        r["seed"] = seed  # equal quality, different detections: only noise differs
    teacher = _run(tmp_path, coco, "teacher", 9, 0.02, str(annotations))
    report = build_tables(variants, teacher, runs)
    main = next(iter(report["tables"].values()))[1]
    rows = {row[0]: row for row in main}
    assert rows["better"][10] == "yes, gain"
    assert rows["same"][10] == "no"
    deltas = [float(d) for d in rows["better"][6].split(" / ")]
    expected = [
        b["final"]["val/AP"] - a["final"]["val/AP"]
        for a, b in zip(runs["baseline"], runs["better"], strict=True)
    ]
    assert np.allclose(deltas, expected, atol=5e-4)
    assert rows["teacher"][6].startswith("AP [") and rows["baseline"][7] == "-"
    assert rows["better"][-1] == "baseline" and len(rows["better"]) == len(
        next(iter(report["tables"].values()))[0]
    )
    assert [t["status"] for t in report["targets"]] == ["significant: yes, gain", "significant: no"]
    # written as a result file, the README's findings read it
    from bench.claims import findings
    from bench.common import write_results
    from tests.test_bench import INFO

    write_results("accuracy_full", "t", {}, report["tables"], out=tmp_path, info=INFO)
    text = findings(tmp_path)
    assert f"better {rows['better'][7]} AP against baseline" in text
    assert "significant: yes, gain" in text and "significant: no" in text


def test_a_stored_run_is_reused_only_for_the_same_key(tmp_path) -> None:
    key = {"spec": "a.yaml", "seed": 1, "overrides": ["x=1"]}
    (tmp_path / RESULT).write_text(json.dumps({"key": key, "final": {"val/AP": 0.3}}))
    assert cached(tmp_path, "a.yaml", 1, ["x=1"])["final"]["val/AP"] == 0.3
    assert cached(tmp_path, "a.yaml", 2, ["x=1"]) is None
    assert cached(tmp_path, "a.yaml", 1, ["x=2"]) is None
    assert cached(tmp_path / "missing", "a.yaml", 1, ["x=1"]) is None
