"""The composition root: the spec's sections are the very configs the model and the methods
read (no translation), and the objective declares its teacher and EMA model."""

from __future__ import annotations

import torch

from detr_models.build import build_model
from distill.detrdistill import DETRDistill
from distill.objective import DetectionObjective
from distill.od_detr import ODDETR
from orchestrator.training import checkpoints
from orchestrator.training.assemble import assemble

CPU = torch.device("cpu")


def test_plain_training_has_no_teacher(tmp_path, tiny_spec):
    setup = assemble(tiny_spec(tmp_path), CPU)
    assert isinstance(setup.objective, DetectionObjective)
    assert setup.objective.teacher_model is None and setup.objective.ema_model is None
    assert setup.model_config.num_classes == setup.train_set.num_classes == 3
    assert setup.model_config.hidden_dim == 32  # the spec's student section, filled in


def test_od_detr_reads_the_spec_section_itself(tmp_path, tiny_spec):
    spec = tiny_spec(
        tmp_path,
        distill={"method": "od_detr", "aux_groups": {"weight": 0.37}, "ema": {"decay": 0.5}},
        **{"student.architecture": "dab_detr"},
    )
    setup = assemble(spec, CPU)
    assert isinstance(setup.objective, ODDETR)
    assert setup.objective.config is spec.distill
    assert setup.objective.config.aux_groups.weight == 0.37
    assert setup.objective.ema.decay == 0.5 and setup.objective.anchors  # DAB: anchor queries
    assert setup.objective.ema_model is not None and setup.ema_stability is not None


def test_detrdistill_gets_its_teacher_from_the_weights_file(tmp_path, tiny_spec):
    student = tiny_spec(tmp_path).student
    teacher_config = student.model_copy(update={"decoder_layers": 3, "num_classes": 3})
    teacher = build_model(teacher_config)
    weights = checkpoints.save_model_file(tmp_path / "teacher.pt", teacher, teacher_config)
    spec = tiny_spec(
        tmp_path,
        distill={"method": "detrdistill", "logits": {"weight": 0.25}},
        teacher={"model": teacher_config.model_dump(), "weights": str(weights)},
    )
    setup = assemble(spec, CPU)
    objective = setup.objective
    assert isinstance(objective, DETRDistill) and objective.config is spec.distill
    assert objective.config.logits.weight == 0.25
    assert objective.teacher_stages == 3 and objective.student_stages == 2
    loaded = objective.teacher_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in objective.teacher_model.parameters())
