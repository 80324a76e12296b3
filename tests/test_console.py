"""The console: one live progress line (redrawn in a terminal, periodic lines in a file), the
workers' output relayed once without Ray's prefixes."""

from __future__ import annotations

import io
import logging

import pytest

from orchestrator import console
from orchestrator.console import MARK, configure_console, relayed_line, show_progress
from orchestrator.launch.relay import relay_handler
from orchestrator.progress_line import ProgressLine, duration, progress_text


def _info(epoch, iteration, epochs=3, total=4):
    return {
        "run": "demo",
        "epoch": epoch,
        "epochs": epochs,
        "iteration": iteration,
        "total": total,
        "loss": 1.5,
        "images_per_s": 12.0,
        "eta_s": 5.0,
        "run_eta_s": 125.0,
    }


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_text_and_durations():
    text = progress_text(_info(2, 2))
    assert text.startswith("demo  epoch 2/3 [##########..........] 2/4  loss 1.500  12.0 img/s")
    assert "epoch eta 5s" in text and "run eta 2:05" in text
    assert [duration(s) for s in (0, 59.6, 61, 3723)] == ["0s", "1:00", "1:01", "1:02:03"]


def test_a_terminal_gets_one_line_redrawn_in_place():
    stream = _Tty()
    line = ProgressLine(stream)
    for epoch in (1, 2):
        for iteration in (1, 2, 3, 4):
            line.update(_info(epoch, iteration))
    out = stream.getvalue()
    assert "\n" not in out and out.count("\r\x1b[K") == 8  # redrawn, never a new line
    assert out.endswith(progress_text(_info(2, 4)))
    line.close()
    assert stream.getvalue().endswith("\r\x1b[K")  # gone when the run ends


def test_a_file_gets_plain_lines_at_most_every_interval_and_at_the_end(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 31.0, 32.0, 33.0])
    monkeypatch.setattr("orchestrator.progress_line.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    line = ProgressLine(stream, interval_s=30.0)
    for info in (_info(1, 1), _info(1, 2), _info(1, 3), _info(1, 4), _info(3, 3), _info(3, 4)):
        line.update(info)
    lines = stream.getvalue().splitlines()
    # the first report, the first one 30 s later, and the last of the run
    assert lines == [progress_text(i) for i in (_info(1, 1), _info(1, 4), _info(3, 4))]
    assert "\r" not in stream.getvalue()


def test_log_lines_go_above_the_live_line(monkeypatch, capsys):
    stream = _Tty()
    live = ProgressLine(stream)
    monkeypatch.setattr(console, "LIVE", live)
    live.update(_info(1, 1))
    console.write_line("epoch 1/3 validation: AP 0.100")
    out = capsys.readouterr().out
    assert out == "epoch 1/3 validation: AP 0.100\n"
    # the bar was cleared before the line and drawn again after it
    assert stream.getvalue().endswith("\r\x1b[K\r\x1b[K" + progress_text(_info(1, 1)))


def test_a_relayed_worker_marks_its_lines_and_progress(capsys):
    log = logging.getLogger("detrdistill")
    propagate = log.propagate
    try:
        configure_console(relayed=True)
        log.info("training detr\non 1 worker")
        log.warning("slow disk")
        show_progress(_info(1, 2))
        out = capsys.readouterr().out.splitlines()
    finally:
        configure_console()
        log.propagate = propagate
    assert out[:3] == [f"{MARK}Ltraining detr", f"{MARK}Lon 1 worker", f"{MARK}Wwarning: slow disk"]
    assert relayed_line(out[3]) == ("progress", _info(1, 2))
    assert relayed_line("Checkpoint successfully created at: ...") is None


@pytest.mark.parametrize("verbose", [False, True])
def test_the_relay_shows_the_products_lines_once_and_rays_only_when_verbose(
    monkeypatch, capsys, verbose
):
    shown_by_ray = []
    live = ProgressLine(io.StringIO(), tty=False)
    updates = []
    monkeypatch.setattr(live, "update", updates.append)
    monkeypatch.setattr("orchestrator.launch.relay.LIVE", live)
    handle = relay_handler(verbose, progress=True, ray_print=shown_by_ray.append)
    progress = f'{MARK}P{{"epoch": 1, "iteration": 2}}'
    handle(
        {
            "pid": 7,
            "is_err": False,
            "lines": [
                f"{MARK}Lepoch 1/3 validation: AP 0.100",
                "Reporting training result 1: TrainingReport(checkpoint=None, metrics={})",
                f"{MARK}Wwarning: slow disk",
                progress,
            ],
        }
    )
    captured = capsys.readouterr()
    assert captured.out == "epoch 1/3 validation: AP 0.100\n"
    assert captured.err == "warning: slow disk\n"
    assert updates == [{"epoch": 1, "iteration": 2}]
    expected = [["Reporting training result 1: TrainingReport(checkpoint=None, metrics={})"]]
    assert [data["lines"] for data in shown_by_ray] == (expected if verbose else [])


def test_a_sweeps_relay_drops_progress(monkeypatch):
    updates = []
    monkeypatch.setattr(console.LIVE, "update", updates.append)
    relay_handler(False, progress=False)({"lines": [f'{MARK}P{{"epoch": 1}}']})
    assert updates == []
