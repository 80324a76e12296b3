"""The full accuracy benchmark on the harder synthetic data (bench/hard_data.py).

    python -m bench.accuracy --suite full [--epochs 16] [--seeds 0 1 2] [--parallel 2]
    python -m bench.accuracy --suite oddetr      (the OD-DETR investigation)

At an equal budget (same data, epochs, schedule and seeds): the teacher (its own recipe, one
seed); the baseline student; DETRDistill and each of its components alone, in the paper's
ablation order (logits, feature, query prior); OD-DETR and each of its components alone
(matching, initial query, auxiliary groups); both methods at once; a heterogeneous pair
(the Deformable teacher into an RT-DETRv2 student, against that student's own baseline). Every
run is kept on disk (bench/accuracy_runs.py): running again trains only what is missing.
bench/accuracy_report.py turns the runs into tables with intervals.
"""

from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

from bench.accuracy_runs import cached, one_thread, train
from bench.common import ROOT
from bench.hard_data import HARD_DATA, recipe

WORK = ROOT / "runs" / "bench_accuracy" / "full"
TEACHER = "experiments/quickstart.yaml"
TEACHER_EPOCHS = 48
DEFORMABLE = "experiments/quickstart_student.yaml"
DETRDISTILL = "experiments/quickstart_distill.yaml"
ODDETR = "experiments/shapes_deformable_oddetr.yaml"
COMBINED = "experiments/shapes_detrdistill_oddetr.yaml"
RTDETR = "experiments/quickstart_rtdetr_student.yaml"
RTDETR_DISTILL = "experiments/quickstart_rtdetr_distill.yaml"


def _only(prefix: str, keep: str, terms: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{t}.enabled=false" for t in terms if t != keep]


DD_TERMS = ("logits", "feature", "query_prior")
OD_TERMS = ("matching", "initial_query", "aux_groups")


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: a spec, its overrides, and the baseline it is compared to."""

    tag: str
    spec: str
    overrides: tuple[str, ...] = ()
    baseline: str | None = "baseline"
    needs_teacher: bool = False
    group: str = "main"


FULL = (
    Variant("baseline", DEFORMABLE, baseline=None),
    Variant("DETRDistill", DETRDISTILL, needs_teacher=True),
    *(
        Variant(
            f"DETRDistill {t} only",
            DETRDISTILL,
            tuple(_only("distill", t, DD_TERMS)),
            needs_teacher=True,
            group="DETRDistill components",
        )
        for t in DD_TERMS
    ),
    Variant("OD-DETR", ODDETR),
    *(
        Variant(
            f"OD-DETR {t} only",
            ODDETR,
            tuple(_only("distill", t, OD_TERMS)),
            group="OD-DETR components",
        )
        for t in OD_TERMS
    ),
    Variant("DETRDistill + OD-DETR", COMBINED, needs_teacher=True),
    Variant("RT-DETRv2 baseline", RTDETR, baseline=None, group="heterogeneous pair"),
    Variant(
        "RT-DETRv2 DETRDistill",
        RTDETR_DISTILL,
        baseline="RT-DETRv2 baseline",
        needs_teacher=True,
        group="heterogeneous pair",
    ),
)


# what the OD-DETR paper's setting implies for a short run, each tried alone
ODDETR_STUDY = (
    Variant("baseline", DEFORMABLE, baseline=None),
    Variant("OD-DETR", ODDETR, group="OD-DETR study"),
    # the paper's 0.9997 with warm-up is this run's default: the ramp (1 + t) / (10 + t) stays
    # under 0.99 until step ~890 of ~1000, so only a decay without warm-up changes the EMA
    Variant(
        "OD-DETR, EMA decay 0.999 without warm-up",
        ODDETR,
        ("distill.ema.decay=0.999", "distill.ema.warmup=false"),
        group="OD-DETR study",
    ),
    Variant(
        "OD-DETR, groups from half-way",
        ODDETR,
        tuple(
            f"distill.{t}.schedule.{key}"
            for t in ("initial_query", "aux_groups")
            for key in ("kind=step", "start_epoch=EPOCHS_HALF")
        ),
        group="OD-DETR study",
    ),
    Variant(
        "OD-DETR, group weights 0.5",
        ODDETR,
        ("distill.initial_query.weight=0.5", "distill.aux_groups.weight=0.5"),
        group="OD-DETR study",
    ),
    Variant(
        "OD-DETR, initial-query boxes not distilled",
        ODDETR,
        ("distill.initial_query.bbox=0", "distill.initial_query.giou=0"),
        group="OD-DETR study",
    ),
)

SUITES = {"full": FULL, "oddetr": ODDETR_STUDY}


def _folder(variant: Variant, seed: int) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in variant.tag.lower()).strip("-")
    return str(WORK / f"{slug}-s{seed}")


def _overrides(variant: Variant, epochs: int) -> list[str]:
    half = str(epochs // 2)
    return [
        o.replace("EPOCHS_HALF", half) for o in (*HARD_DATA, *recipe(epochs), *variant.overrides)
    ]


def run_suite(
    variants: tuple[Variant, ...], epochs: int, seeds: list[int], parallel: int
) -> tuple[dict, dict[str, list[dict]]]:
    """(teacher result, {tag: results per seed}): the runs without a teacher start at once,
    the distilled ones when the teacher is trained."""
    from orchestrator.data.build import data_paths
    from orchestrator.spec.loader import load_spec
    from orchestrator.spec.paths import resolve_paths

    teacher_overrides = [*HARD_DATA, *recipe(TEACHER_EPOCHS)]
    data_paths(resolve_paths(load_spec(ROOT / TEACHER, teacher_overrides), ROOT).data)  # once
    context = get_context("spawn")
    jobs: dict[str, list[Future]] = {}
    # components last: if the suite is stopped, the main comparisons are there first
    order = sorted(variants, key=lambda v: "components" in v.group)
    with ProcessPoolExecutor(parallel, mp_context=context, initializer=one_thread) as pool:

        def submit(variant: Variant, extra: list[str]) -> None:
            jobs[variant.tag] = [
                pool.submit(
                    train,
                    variant.spec,
                    s,
                    [*_overrides(variant, epochs), *extra],
                    _folder(variant, s),
                )
                for s in seeds
            ]

        folder = str(WORK / "teacher-s0")
        teacher = cached(folder, TEACHER, 0, teacher_overrides)
        teacher_job = None
        if teacher is None:
            teacher_job = pool.submit(train, TEACHER, 0, teacher_overrides, folder)
            for variant in (v for v in order if not v.needs_teacher):
                submit(variant, [])
            teacher = teacher_job.result()
        print(f"teacher: {teacher['final']}", flush=True)
        weights = f"teacher.weights={teacher['model_file']}"
        for variant in order:
            if variant.tag not in jobs:
                submit(variant, [weights] if variant.needs_teacher else [])
        runs = {v.tag: [job.result() for job in jobs[v.tag]] for v in variants}
    return teacher, runs
