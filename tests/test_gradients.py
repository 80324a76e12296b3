import pytest
import torch

from detr_models.build import build_model
from detr_models.config import tiny_config
from detr_models.criterion import SetCriterion, total
from detr_models.matcher import HungarianMatcher
from detr_models.output import QueryGroup


@pytest.mark.parametrize("arch", ["detr", "conditional_detr", "dab_detr"])
def test_gradients_reach_every_trainable_parameter(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch, levels=["C4", "C5"])).train()
    # the DAB box head's last layer starts at zero (boxes start at the anchors), which blocks
    # gradients to the layers before it on the very first step only
    torch.nn.init.normal_(model.decoder.box_head.layers[-1].weight, std=0.01)
    targets = [
        {
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.7, 0.1, 0.1]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    # the model's own content queries start at zero, so first-layer content projections only
    # learn through a group that brings content (as distillation groups do)
    position = torch.rand(2, 4) if arch == "dab_detr" else torch.randn(2, model.hidden_dim)
    group = QueryGroup("g", torch.randn(2, model.hidden_dim), position)
    out = model(torch.randn(2, 3, 64, 64), None, [group])
    criterion = SetCriterion(3, HungarianMatcher())
    losses, indices = criterion(out, targets)
    fixed = [(torch.tensor([0, 1]), torch.tensor([0, 1])), (torch.zeros(0, dtype=torch.long),) * 2]
    group_losses, _ = criterion(out.groups["g"], targets, indices=fixed, prefix="g_")
    total({**losses, **group_losses}).backward()
    no_grad = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert no_grad == []
    assert len(indices) == 2 and len(indices[0][0][0]) == 2
