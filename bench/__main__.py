"""Run every benchmark at its default (CPU-sized) settings and put the tables in the README.

    python -m bench [--only NAME ...] [--no-readme] [--report-only]        (`make bench`)

Runs the benchmarks one after another (timings must not share the CPU), each in its own
process, then writes bench/results/README.md and the README's "Benchmarks" section from the
result files, including GPU results (`*_cuda.*`) when a GPU run left them there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.claims import BLOCKS
from bench.common import RESULTS, ROOT, markdown_table

BENCHMARKS = (
    "step_time",
    "matching",
    "orchestration",
    "memory",
    "realtime",
    "hf_teacher",
    "deploy",
    "accuracy",
)
# result files, in README order (CPU first, then a GPU run's)
RESULT_FILES = (
    "step_time_cpu",
    "step_time_cpu_512",
    "step_time_dense_mask",
    "step_time_cpu_rtdetr",
    "step_time_cuda",
    "matching_cpu",
    "matching_cuda",
    "orchestration",
    "orchestration_cuda",
    "memory_cpu",
    "memory_cuda",
    "realtime_cpu",
    "peer_cpu",
    "peer_cpu_rtdetr",
    "hf_teacher",
    "deploy_cpu",
    "accuracy",
    "accuracy_full",
    "accuracy_oddetr",
    "accuracy_sweep",
)
# before/after comparisons: their tables are shown, their target rows would only repeat
STUDIES = {"step_time_dense_mask"}
START, END = "<!-- bench:start -->", "<!-- bench:end -->"  # the tables


def report(results: Path = RESULTS) -> str:
    """The targets summary and every result table found in `results`, as markdown."""
    found = [name for name in RESULT_FILES if (results / f"{name}.json").exists()]
    targets = []
    for name in found:
        if name in STUDIES:
            continue
        for t in json.loads((results / f"{name}.json").read_text()).get("targets", []):
            targets.append([t["target"], t["measured"], t["status"]])
    parts = ["#### Targets", "", markdown_table(["target", "measured", "status"], targets), ""]
    parts += [(results / f"{name}.md").read_text().replace("### ", "#### ", 1) for name in found]
    return "\n".join(parts)


def markers(name: str) -> tuple[str, str]:
    """The README markers of a generated block (bench/claims.py)."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def update_readme(text: str, readme: Path = ROOT / "README.md", name: str = "bench") -> None:
    """Replace what lies between the `name` markers of `readme` with `text`."""
    start, end = markers(name)
    content = readme.read_text()
    if start not in content or end not in content:
        sys.exit(f"{readme}: markers {start} / {end} not found; add them where the text goes")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def update_claims(readme: Path = ROOT / "README.md", results: Path = RESULTS) -> None:
    """Rewrite every generated accuracy block of the README from the result files."""
    for name, block in BLOCKS.items():
        update_readme(block(results), readme, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing; rebuild the tables from results"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    for name in [] if args.report_only else args.only:
        print(f"=== bench.{name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT).returncode
        if code != 0:
            sys.exit(f"bench.{name} failed with exit code {code}")
        print(f"=== bench.{name}: {time.perf_counter() - start:.0f} s", flush=True)
    text = report()
    (RESULTS / "README.md").write_text(text + "\n")
    if not args.no_readme:
        update_readme(text)
        update_claims()
    minutes = (time.perf_counter() - started) / 60
    print(f"all benchmarks in {minutes:.1f} min; tables in {RESULTS / 'README.md'}", flush=True)


if __name__ == "__main__":
    main()
