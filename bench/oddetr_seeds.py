"""OD-DETR against plain training on the synthetic shapes, over seeds, with instability curves.

    python -m bench.oddetr_seeds [--seeds 0 1 2] [--archs deformable dab] [--ablations]

Each run is a real `detrdistill run` (in-process Ray Train, MLflow in
runs/bench_oddetr/mlflow.db, experiment `oddetr-seeds`). Prints and writes
bench/results/oddetr_seeds.md (final AP of the baseline, the OD-DETR student and its EMA model,
mean +- std over seeds, and the mean matching instability) and
bench/results/oddetr_instability.png (instability per epoch, baseline vs OD-DETR), which is
also logged to MLflow in a summary run. `--ablations` adds one seed of every
experiments/ablations/oddetr_*.yaml.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import mean_std  # noqa: E402
from orchestrator import tracking  # noqa: E402
from orchestrator.launch.run import run_experiment  # noqa: E402
from orchestrator.spec.loader import load_spec  # noqa: E402
from orchestrator.spec.paths import resolve_paths  # noqa: E402

PAIRS = {
    "deformable": (
        "experiments/quickstart_student.yaml",
        "experiments/shapes_deformable_oddetr.yaml",
    ),
    "dab": ("experiments/shapes_dab_detr.yaml", "experiments/shapes_dab_detr_oddetr.yaml"),
}
WORK = ROOT / "runs" / "bench_oddetr"
EXPERIMENT = "oddetr-seeds"


def run_one(path: str, seed: int, tag: str, extra: list[str]) -> dict:
    uri = f"sqlite:///{WORK / 'mlflow.db'}"
    overrides = [
        f"seed={seed}",
        f"name={Path(path).stem.replace('_', '-')}-s{seed}",
        "scaling.num_workers=0",
        "train.eval_interval=4",
        "mlflow.register_as=null",
        f"mlflow.tracking_uri={uri}",
        f"mlflow.experiment={EXPERIMENT}",
        f"data.source.cache_dir={ROOT / 'data' / 'cache'}",
        *extra,
    ]
    spec = resolve_paths(load_spec(ROOT / path, overrides), ROOT)
    result = run_experiment(spec, storage_path=WORK / "ray")
    history = {
        key: tracking.metric_history(uri, result.mlflow_run_id, key)
        for key in ("stability/instability", "stability_ema/instability", "stability/gt_flip_rate")
    }
    final = {k: v for k, v in result.metrics.items() if k.startswith(("val/", "val_ema/"))}
    return {"tag": tag, "seed": seed, "run_id": result.mlflow_run_id, "final": final, **history}


def table(rows: list[dict]) -> str:
    lines = [
        "| run | seeds | AP | AP50 | EMA AP | EMA AP50 | mean instability | mean GT flip rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tag in dict.fromkeys(r["tag"] for r in rows):
        group = [r for r in rows if r["tag"] == tag]

        def final(key: str, group=group) -> list[float]:
            return [r["final"][key] for r in group if key in r["final"]]

        lines.append(
            f"| {tag} | {len(group)} | {mean_std(final('val/AP'))} | {mean_std(final('val/AP50'))} "
            f"| {mean_std(final('val_ema/AP'))} | {mean_std(final('val_ema/AP50'))} "
            f"| {mean_std([statistics.mean(r['stability/instability']) for r in group])} "
            f"| {mean_std([statistics.mean(r['stability/gt_flip_rate']) for r in group])} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["tag"].split(" ")[0] for r in rows if "ablation" not in r["tag"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        for tag in dict.fromkeys(r["tag"] for r in rows if r["tag"].startswith(arch + " ")):
            group = [r for r in rows if r["tag"] == tag]
            for key, style in (("stability/instability", "-"), ("stability_ema/instability", "--")):
                curves = [r[key] for r in group if r[key]]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                mean = [statistics.mean(c[i] for c in curves) for i in range(length)]
                label = tag + (" (EMA)" if "ema" in key else "")
                ax.plot(range(2, length + 2), mean, style, label=f"{label}, {len(curves)} seeds")
        ax.set_title(f"{arch}: matching instability on the probe images")
        ax.set_xlabel("epoch")
        ax.set_ylabel("query slots that changed GT, per image")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    from orchestrator.console import configure_console

    configure_console()  # the training loop logs its progress and validation tables
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--archs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--set", action="append", default=[], help="extra spec override")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in args.archs:
        baseline, oddetr = PAIRS[arch]
        for seed in args.seeds:
            rows.append(run_one(baseline, seed, f"{arch} baseline", args.set))
            rows.append(run_one(oddetr, seed, f"{arch} OD-DETR", args.set))
            print(table(rows), flush=True)
    if args.ablations:
        for path in sorted((ROOT / "experiments" / "ablations").glob("oddetr_*.yaml")):
            rows.append(run_one(str(path.relative_to(ROOT)), 0, f"ablation {path.stem}", args.set))
            print(table(rows), flush=True)
    text = table(rows)
    print(text)
    (out / "oddetr_seeds.md").write_text(
        "OD-DETR vs plain training on the synthetic shapes (`python bench/oddetr_seeds.py`), "
        "final epoch, CPU.\n\n" + text + "\n"
    )
    png = out / "oddetr_instability.png"
    plot(rows, png)
    uri = f"sqlite:///{WORK / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, EXPERIMENT)
    run_id, _ = tracking.find_or_create_run(uri, experiment_id, "summary", "summary", {})
    logger = tracking.RunLogger(uri, run_id)
    logger.artifact(png)
    logger.artifact(out / "oddetr_seeds.md")
    logger.finish()
    print(f"wrote {out / 'oddetr_seeds.md'} and {png}; logged to {uri} run {run_id}")


if __name__ == "__main__":
    main()
