"""Checks that need a CUDA device (`pytest -m gpu`, `make gpu-check`); skipped without one."""

import math

import pytest
import torch
from torch import nn

from orchestrator.training import engine
from orchestrator.training.engine import train_one_epoch
from tests.test_engine import ManyTermObjective, fake_batches

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _syncs_allowed(function):
    """`function` with CUDA syncs allowed: the training loop's sanctioned sync points."""

    def allowed(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return function(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    return allowed


@pytest.mark.parametrize("amp", [False, True])
def test_training_steps_sync_only_for_the_finite_check_and_progress_lines(monkeypatch, amp):
    """Every CUDA sync raises inside `train_one_epoch` except in the finite check and the
    loss-sum transfer, so a per-term float() or item() in the loop fails this test."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Linear(48, 4).to(device)
    objective = ManyTermObjective(30)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = fake_batches(6, device)  # on the device already: the loader's copy is not tested
    monkeypatch.setattr(engine, "_finite_everywhere", _syncs_allowed(engine._finite_everywhere))
    monkeypatch.setattr(engine, "_to_host", _syncs_allowed(engine._to_host))
    logs = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):  # the mode is in force
            float(torch.ones((), device=device))
        metrics = train_one_epoch(
            model,
            objective,
            batches,
            optimizer,
            None,
            device,
            0,
            1,
            clip_grad_norm=1.0,
            amp=amp,
            log_every=4,
            log=logs.append,
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [entry["iteration"] for entry in logs] == [4, 6]
    total = sum(float(sum(step.values())) for step in objective.seen) / len(objective.seen)
    assert math.isclose(metrics["loss"], total, rel_tol=1e-4)
    assert 0 < metrics["loss_det"] < metrics["loss"]
