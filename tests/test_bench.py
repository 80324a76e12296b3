"""The benchmark helpers whose output the README publishes."""

import pytest
import torch

from bench.__main__ import END, START, report, update_readme
from bench.common import target_row, write_results
from bench.matching import MatchTimer, loop_match, random_targets
from bench.pairs import only, pair
from detr_models.matcher import HungarianMatcher
from distill.config import DETRDistillConfig
from orchestrator.training.reporters import LocalReporter

INFO = {
    "cpu": "test CPU",
    "cores": 2,
    "torch_threads": 2,
    "gpu": None,
    "python": "3",
    "torch": "t",
    "torchvision": "tv",
    "ray": "r",
    "mlflow": "m",
    "git_commit": "abc",
}


def test_report_gathers_targets_and_tables_and_readme_keeps_the_rest(tmp_path):
    write_results(
        "orchestration",
        "Orchestration",
        {"epochs": 4},
        {"caption": (["path", "images/s"], [["plain", "60.0"], ["ray", "58.1"]])},
        targets=[target_row("ratio >= 0.95", "0.968", "met")],
        out=tmp_path,
        info=INFO,
    )
    write_results(
        "step_time_cpu",
        "Step time",
        {},
        {"": (["case", "ms"], [["student", "90"]])},
        targets=[target_row("overhead <= 1.15", "1.31", "missed")],
        out=tmp_path,
        info=INFO,
    )
    text = report(tmp_path)
    # step time comes before orchestration, whatever the order they were written in
    assert text.index("overhead <= 1.15 | 1.31 | missed") < text.index("ratio >= 0.95 | 0.968")
    assert "| ray | 58.1 |" in text and "test CPU, 2 cores" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\nbefore\n{START}\nold table\n{END}\nafter\n")
    update_readme(text, readme)
    update_readme(text, readme)  # idempotent
    content = readme.read_text()
    assert content.startswith("# title\nbefore\n") and content.endswith(f"{END}\nafter\n")
    assert "old table" not in content and content.count("#### Targets") == 1


def test_update_readme_without_markers_names_the_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match=r"README\.md: markers"):
        update_readme("x", readme)
    assert readme.read_text() == "# no markers\n"


def test_loop_built_cost_gives_the_batched_assignment():
    torch.manual_seed(1)
    matcher = HungarianMatcher()
    logits, boxes = torch.randn(4, 20, 80), torch.rand(4, 20, 4) * 0.5 + 0.25
    targets = random_targets(4, 5, "cpu")
    targets[2] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    for (q1, t1), (q2, t2) in zip(
        matcher(logits, boxes, targets), loop_match(matcher, logits, boxes, targets), strict=True
    ):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)


def test_match_timer_counts_calls_and_restores_the_matcher():
    original = HungarianMatcher.forward
    matcher = HungarianMatcher()
    logits, boxes = torch.randn(2, 10, 3), torch.rand(2, 10, 4)
    targets = [{"boxes": torch.rand(2, 4) * 0.5 + 0.2, "labels": torch.tensor([0, 1])}] * 2
    with MatchTimer("cpu") as timer:
        for _ in range(3):
            matcher(logits, boxes, targets)
        matcher.cost_matrices(logits, boxes, targets)
    assert timer.calls == 4 and timer.seconds > 0
    assert HungarianMatcher.forward is original
    matcher(logits, boxes, targets)
    assert timer.calls == 4


def test_local_reporter_keeps_only_the_latest_checkpoint(tmp_path):
    reporter = LocalReporter(tmp_path)
    for epoch in (1, 2):
        folder = reporter.new_checkpoint_dir(epoch)
        (folder / "model.pt").write_text(str(epoch))
        reporter.report({"epoch": epoch}, folder)
    assert [m["epoch"] for m in reporter.history] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0002"]
    assert (reporter.last_checkpoint / "model.pt").read_text() == "2"


@pytest.mark.parametrize("arch", ["deformable_detr", "conditional_detr", "dab_detr"])
@pytest.mark.parametrize("config", ["tiny", "resnet50"])
def test_pairs_distil_a_bigger_teacher_into_a_student_with_shared_levels(arch, config):
    student, teacher = pair(arch, config)
    assert student.architecture == teacher.architecture == arch
    assert set(student.feature_strides) & set(teacher.feature_strides)
    if config == "tiny":
        assert teacher.hidden_dim > student.hidden_dim
        assert teacher.decoder_layers > student.decoder_layers
    else:
        assert (student.backbone, teacher.backbone) == ("resnet50", "resnet101")
        assert student.num_queries == 300 and student.backbone_weights is None


def test_only_keeps_one_detrdistill_term():
    config = only(DETRDistillConfig(), "feature")
    enabled = {name: getattr(config, name).enabled for name in ("logits", "feature", "query_prior")}
    assert enabled == {"logits": False, "feature": True, "query_prior": False}


def test_steady_rate_leaves_out_the_first_and_the_final_epoch():
    from bench.orchestration import steady_images_per_s

    # epoch 1 ends at 10 s (start-up), epochs 2-3 take 2 s each, the last one evaluates (9 s)
    assert steady_images_per_s([10.0, 12.0, 14.0, 23.0], 100) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="3 epochs"):
        steady_images_per_s([1.0, 2.0], 100)


def test_readme_numbers_are_the_result_files():
    """Every table and accuracy sentence in the README is what the report writes from
    bench/results now: a number typed by hand or left from older results fails here."""
    from bench.__main__ import markers
    from bench.claims import BLOCKS
    from bench.common import RESULTS, ROOT

    readme = (ROOT / "README.md").read_text()

    def block(name: str) -> str:
        start, end = markers(name)
        return readme.split(start, 1)[1].split(end, 1)[0].strip("\n")

    assert block("bench") == report(RESULTS).strip("\n")
    for name, write in BLOCKS.items():
        assert block(name) == write(RESULTS).strip("\n"), (
            f"README block {name}: run python -m bench --report-only"
        )


def test_claims_name_the_commit_and_say_what_is_missing(tmp_path):
    from bench.claims import findings, quickstart

    assert "No `bench/results/accuracy.json` yet" in quickstart(tmp_path)
    write_results(
        "accuracy",
        "Accuracy",
        {"epochs": 24, "seeds": [0, 1, 2]},
        {
            "main": (
                ["model", "AP"],
                [
                    ["baseline", "0.150 +- 0.020"],
                    ["DETRDistill", "0.190 +- 0.010"],
                    ["OD-DETR", "0.160 +- 0.030"],
                ],
            )
        },
        out=tmp_path,
        info=INFO,
    )
    text = quickstart(tmp_path)
    assert "commit abc" in text and "about 0.020 AP" in text and "24 epochs" in text
    assert "DETRDistill 0.190 +- 0.010" in text
    assert findings(tmp_path).count("yet: run") == 3
