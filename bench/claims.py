"""The README's accuracy sentences, written from bench/results/*.json (never typed by hand).

`python -m bench --report-only` rewrites each block between `<!-- NAME:start -->` and
`<!-- NAME:end -->` in README.md; a block whose result file is missing says how to make it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bench.common import RESULTS


def _load(results: Path, name: str) -> dict | None:
    file = results / f"{name}.json"
    return json.loads(file.read_text()) if file.exists() else None


def _rows(result: dict) -> dict[str, dict]:
    """The result's model table by model: the one with AP differences where there is one."""
    tables = [t for t in result["tables"].values() if t and "model" in t[0]]
    table = next((t for t in tables if "delta AP" in t[0]), tables[0])
    return {row["model"]: row for row in table}


def _when(result: dict) -> str:
    return f"commit {result['machine']['git_commit']}, {result['measured']}"


def _missing(name: str, command: str) -> str:
    return f"(No `bench/results/{name}.json` yet: run `{command}`.)"


def _effect(row: dict) -> str:
    return (
        f"{row['model']} {row['delta AP']} AP against {row['against']} (per seed "
        f"{row['delta AP per seed']}; 95% over seeds {row['95% over seeds']}, over validation "
        f"images {row['95% over val images']}: significant: {row['significant']})"
    )


def quickstart(results: Path = RESULTS) -> str:
    """What the demo's single seed can show, and the quickstart pair over seeds."""
    small = _load(results, "accuracy")
    if small is None:
        return _missing("accuracy", "python -m bench.accuracy")
    rows = _rows(small)
    config = small["config"]
    base, distilled = rows["baseline"], rows["DETRDistill"]
    spread = base["AP"].split("+-")[-1].strip()
    text = (
        "`make demo` trains each student once, with one seed, and evaluates it on 32 "
        "validation images. Under its table it prints the distilled student's AP difference "
        "from the baseline with a 95% interval over those images; that interval does not "
        "include the seed-to-seed spread of training, which one run cannot measure. "
        f"The same specs over {len(config['seeds'])} seeds (`python -m bench.accuracy`, "
        f"{config['epochs']} epochs, {_when(small)}): baseline AP {base['AP']}, DETRDistill "
        f"{distilled['AP']}, OD-DETR {rows['OD-DETR']['AP']} (mean +- std). One baseline seed "
        f"differs from the next by about {spread} AP, so one demo can show the direction of "
        "a large effect at best; the harder benchmark below measures effects with intervals."
    )
    full = _load(results, "accuracy_full")
    if full is None:
        return text + " " + _missing("accuracy_full", "python -m bench.accuracy --suite full")
    rows = _rows(full)
    return (
        f"{text} On it ({full['config']['epochs']} epochs, seeds "
        f"{', '.join(map(str, full['config']['seeds']))}, 512 validation images, {_when(full)}): "
        f"{_effect(rows['DETRDistill'])}; "
        f"{_effect(rows['OD-DETR'])}."
    )


def findings(results: Path = RESULTS) -> str:
    """Every effect of the harder benchmark, the OD-DETR study and the sweep, one per line."""
    parts = []
    for name, command, what in (
        ("accuracy_full", "python -m bench.accuracy --suite full", "The harder benchmark"),
        ("accuracy_oddetr", "python -m bench.accuracy --suite oddetr", "The OD-DETR study"),
        ("accuracy_sweep", "python -m bench.sweep_weights", "The sweep of DETRDistill's weights"),
    ):
        result = _load(results, name)
        if result is None:
            parts.append(f"- {what}: {_missing(name, command)}")
            continue
        parts.append(f"- {what} ({_when(result)}), AP difference, mean over seeds:")
        rows = _rows(result)
        for row in rows.values():
            if row["delta AP"] != "-":
                parts.append(f"  - {_effect(row)};")
        unstable = [
            f"{tag} {row['mean instability']}"
            for tag, row in rows.items()
            if row["mean instability"] != "-" and name == "accuracy_full"
        ]
        if unstable:
            parts.append(f"  - mean matching instability: {'; '.join(unstable)}.")
    return "\n".join(parts)


BLOCKS: dict[str, Callable[[Path], str]] = {
    "accuracy-quickstart": quickstart,
    "accuracy-findings": findings,
}
