"""What every benchmark shares: the machine and versions, timing, tables and result files.

Each benchmark writes `bench/results/<name>.json` (machine, versions, config, rows) and
`bench/results/<name>.md` (the same table as printed), so a number is never separated from the
machine and the settings that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model and cores, GPU (if any) and the versions that shape the numbers."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for package in ("torchvision", "ray", "mlflow", "scipy"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    info["git_commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def machine_line(info: dict[str, Any]) -> str:
    gpu = info["gpu"] or "no GPU"
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), {gpu}; "
        f"torch {info['torch']}, torchvision {info['torchvision']}, ray {info['ray']}, "
        f"mlflow {info['mlflow']}, python {info['python']}, commit {info['git_commit']}"
    )


def sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    cases: dict[str, Callable[[], None]], repeats: int, warmup: int = 1, device: Any = "cpu"
) -> dict[str, float]:
    """Median milliseconds per call of every case, after `warmup` calls of each."""
    rounds = interleaved_times(cases, repeats, warmup, device)
    return {name: statistics.median(values) for name, values in rounds.items()}


def interleaved_times(
    cases: dict[str, Callable[[], None]], repeats: int, warmup: int = 1, device: Any = "cpu"
) -> dict[str, list[float]]:
    """Milliseconds of every call of every case, round by round, after `warmup` calls of each.

    The cases take turns (round-robin), so a machine whose speed drifts over minutes biases
    none of them against the others, and ratios can be taken within a round.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def mean_std(values: list[float]) -> str:
    """`mean +- std` to 3 decimals (just the value for one, `-` for none)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str,
    title: str,
    config: dict[str, Any],
    tables: dict[str, tuple[Sequence[str], Sequence[Sequence[Any]]]],
    notes: Sequence[str] = (),
    targets: Sequence[dict[str, str]] = (),
    out: Path = RESULTS,
    info: dict[str, Any] | None = None,
) -> str:
    """Print the tables and write `<out>/<name>.json` and `.md`; returns the markdown.

    `targets`: {"target", "measured", "status"} rows that `python -m bench` gathers into the
    README's summary."""
    info = info or machine()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"### {title}", "", f"Machine: {machine_line(info)}. Measured {when}.", ""]
    for caption, (header, rows) in tables.items():
        if caption:
            parts += [caption, ""]
        parts += [markdown_table(header, rows), ""]
    parts += [*notes, ""] if notes else []
    parts.append(f"Config: `{json.dumps(config, sort_keys=True)}`")
    text = "\n".join(parts) + "\n"
    print(text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "title": title,
        "measured": when,
        "machine": info,
        "config": config,
        "tables": {
            caption: [dict(zip(header, row, strict=True)) for row in rows]
            for caption, (header, rows) in tables.items()
        },
        "notes": list(notes),
        "targets": list(targets),
    }
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(text)
    return text


def verdict(value: float, target: float, at_most: bool = True) -> str:
    ok = value <= target if at_most else value >= target
    return "met" if ok else "missed"


def target_row(target: str, measured: str, status: str) -> dict[str, str]:
    return {"target": target, "measured": measured, "status": status}
