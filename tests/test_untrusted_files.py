"""Nothing the product reads is unpickled as code: a payload planted in a model file, a
training state, an EMA model or a downloaded model is refused with our own message (never
torch's advice to turn the protection off), and never runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detr_models.build import build_model
from detr_models.config import tiny_config
from orchestrator.errors import UserInputError
from orchestrator.training import checkpoints
from orchestrator.training.fit import run_training
from orchestrator.training.model_source import load_model
from orchestrator.training.reporters import LocalReporter


class Payload:
    """Unpickling this writes a marker file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _refused(call, marker: Path) -> str:
    with pytest.raises(UserInputError) as info:
        call()
    assert not marker.exists(), "the planted payload ran"
    message = str(info.value)
    assert "refused" in message and "weights_only" not in message
    return message


def test_model_and_ema_files_with_a_payload_are_refused(tmp_path):
    marker = tmp_path / "marker"
    config = tiny_config("detr")
    good = tmp_path / "model.pt"
    checkpoints.save_model_file(good, build_model(config), config)
    payload = torch.load(good, weights_only=True)
    payload["extra"] = {"note": Payload(marker)}  # hidden deep inside a valid-looking file
    for name in ("model.pt", checkpoints.EMA_MODEL_FILE):
        torch.save(payload, tmp_path / name)
        message = _refused(lambda n=name: checkpoints.read_model_file(tmp_path / n), marker)
        assert name in message
    torch.save(Payload(marker), tmp_path / "bare.pt")
    _refused(lambda: load_model(str(tmp_path / "bare.pt")), marker)  # what eval/predict use


def test_a_planted_training_state_is_refused_on_resume(tmp_path, tiny_spec):
    spec = tiny_spec(tmp_path, epochs=1)
    first = LocalReporter(tmp_path / "run")
    run_training(spec, first)
    folder = first.last_checkpoint
    state = checkpoints.load_training_state(folder)  # our own state loads safely
    assert state["epoch"] == 1 and torch.is_tensor(state["rng"][0]["torch"])
    marker = tmp_path / "marker"
    torch.save({**state, "owner": Payload(marker)}, folder / checkpoints.STATE_FILE)
    resumed = LocalReporter(tmp_path / "again", resume=folder)
    message = _refused(lambda: run_training(spec, resumed), marker)
    assert "training state" in message


def test_a_truncated_file_is_a_clear_error(tmp_path):
    config = tiny_config("detr")
    path = checkpoints.save_model_file(tmp_path / "model.pt", build_model(config), config)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserInputError, match=r"model\.pt: not a readable weights file"):
        checkpoints.read_model_file(path)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_a_model_file_asking_for_a_huge_model_is_refused_before_building(tmp_path):
    config = tiny_config("detr")
    path = checkpoints.save_model_file(tmp_path / "model.pt", build_model(config), config)
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden_dim"] = 10**9  # would try to allocate hundreds of GB
    torch.save(payload, path)
    with pytest.raises(UserInputError, match=r"model config in this file is not valid.*hidden_dim"):
        load_model(str(path))
