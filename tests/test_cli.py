import json
import re
import subprocess
import sys

from orchestrator.cli.main import main


def test_synth_then_check_prints_perfect_table(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert (
        main(
            ["data", "synth", "--out", str(out), "--train", "4", "--val", "3", "--image-size", "64"]
        )
        == 0
    )
    assert (
        main(
            [
                "data",
                "check",
                str(out),
                "--split",
                "val",
                "--size",
                "64",
                "--draw-dir",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "images                    3" in printed
    assert "AP50    1.000" in printed
    assert len(list((tmp_path / "d").glob("*.png"))) == 3


def test_synth_refuses_existing_folder_and_bad_params(tmp_path, capsys):
    out = tmp_path / "shapes"
    (out / "keep").mkdir(parents=True)
    assert main(["data", "synth", "--out", str(out), "--train", "2", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert (out / "keep").is_dir()  # nothing touched
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--classes", "99"]) == 2
    assert "num_classes" in capsys.readouterr().err


def test_check_broken_dataset_names_file_and_exits_2(small_coco, capsys):
    images_dir, ann_file = small_coco
    data = json.loads(ann_file.read_text())
    data["annotations"][1]["category_id"] = 42
    ann_file.write_text(json.dumps(data))
    code = main(["data", "check", "--images", str(images_dir), "--annotations", str(ann_file)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {ann_file}: annotation id 2 has unknown category_id 42" in err
    assert "Traceback" not in err


def test_check_needs_a_dataset(capsys):
    assert main(["data", "check"]) == 2
    assert "give a dataset ROOT" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    # the installed entry point, as a user runs it: no traceback, exit 2
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli.main",
            "data",
            "check",
            "--images",
            str(tmp_path),
            "--annotations",
            str(tmp_path / "missing.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "missing.json: annotation file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_library_log_reaches_stdout_once(capsys):
    import logging

    from orchestrator.console import configure_console

    configure_console()
    configure_console()  # a second call (CLI, then a worker in the same process) adds nothing
    log = logging.getLogger("detrdistill")
    log.info("epoch 1 validation")
    log.warning("the model was trained on other category ids")
    log.debug("hidden unless -v")
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["epoch 1 validation"]
    assert captured.err.splitlines() == ["warning: the model was trained on other category ids"]


def test_check_scores_the_ground_truth_training_sees(small_coco, capsys):
    # small_coco has two degenerate boxes (zero width, outside the image) that training drops;
    # evaluation must drop them too, or the ground truth itself could never reach AP 1.0
    images, annotations = small_coco
    args = ["--images", str(images), "--annotations", str(annotations), "--size", "64"]
    code = main(["data", "check", *args, "--max-size", "100"])
    out = capsys.readouterr().out
    assert code == 0 and "distorted" not in out
    assert re.search(r"AP\s+1\.000", out), out
