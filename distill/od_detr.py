"""OD-DETR (Wu, Sun, Li, IJCAI 2024): online distillation from an EMA teacher of the student.

No pretrained teacher: an exponential moving average of the student (`EmaTeacher`, updated by
`after_step`) runs in eval mode under no_grad on the same batch, and supplies
1. matching distillation: its Hungarian match of each query joins the student's own (both are
   positives), with a multi-target quality focal loss (replaces the main detection loss);
2. initial-query prediction distillation: its initial queries enter the student as the group
   `od_init`, whose outputs at every stage are held to the teacher's (soft BCE + L1 + GIoU);
3. auxiliary groups: per GT and teacher stage, the two cheapest teacher queries (hidden state as
   content, box as anchor) enter the student as groups `od_aux_s{k}` (or one pooled `od_aux`),
   positive for their GT under a fixed assignment with the normal detection loss.
The EMA model is evaluated beside the student and can be the exported model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from detr_models.batch import Batch
from detr_models.criterion import SetCriterion, encoder_proposal_losses, num_boxes
from detr_models.matcher import Assignment
from detr_models.output import DetrOutput, QueryGroup
from distill.aux_groups import auxiliary_groups
from distill.config import ODDETRConfig
from distill.ema import EmaTeacher
from distill.logits_distill import logits_distillation_loss
from distill.matching_distill import agreement, map_by_token, matching_distillation_loss
from distill.objective import Diagnostics, Losses, Progress, TrainingObjective
from distill.schedules import part_totals, stage_weights

INIT_GROUP = "od_init"


@dataclass
class EmaState:
    """What `prepare` hands to the losses: the EMA teacher's output, each term's scale now, and
    the auxiliary groups with their fixed assignments."""

    output: DetrOutput
    scale: dict[str, float]
    aux: list[tuple[QueryGroup, list[Assignment]]]


class ODDETR(TrainingObjective):
    """The OD-DETR training objective. Holds the EMA teacher (in its state dict, never in the
    optimiser: its parameters do not require grad)."""

    def __init__(
        self,
        student: nn.Module,
        criterion: SetCriterion,
        config: ODDETRConfig,
        anchors: bool,
    ) -> None:
        super().__init__(criterion)
        self.ema = EmaTeacher(student, config.ema.decay, config.ema.warmup)
        self.student = [student]  # a list keeps it out of this module's state dict
        self.config = config
        self.anchors = anchors
        aux = config.aux_groups
        self.aux_criterion = SetCriterion(
            criterion.num_classes,
            criterion.matcher,
            aux.cls,
            aux.bbox,
            aux.giou,
            criterion.focal_alpha,
            criterion.focal_gamma,
        )

    @property
    def ema_model(self) -> nn.Module:
        return self.ema.model

    def after_step(self) -> None:
        self.ema.update(self.student[0])

    def scales(self, progress: Progress) -> dict[str, float]:
        cfg = self.config
        return {
            "matching": cfg.matching.scale(progress),
            "initial_query": cfg.initial_query.scale(progress),
            "aux": cfg.aux_groups.scale(progress),
        }

    def prepare(self, batch: Batch, progress: Progress) -> tuple[EmaState, list[QueryGroup]]:
        """Run the EMA teacher: (state for the losses, the query groups to add)."""
        scale = self.scales(progress)
        t_out = self.ema(batch.images, batch.pixel_mask)
        groups: list[QueryGroup] = []
        if scale["initial_query"] > 0:
            groups.append(
                QueryGroup(INIT_GROUP, t_out.init_content.detach(), t_out.init_position.detach())
            )
        aux = []
        if scale["aux"] > 0:
            aux = auxiliary_groups(
                t_out,
                batch.targets,
                self.criterion.matcher,
                self.anchors,
                self.config.aux_groups.queries_per_gt,
                self.config.aux_groups.grouping == "pooled",
            )
            groups += [group for group, _ in aux]
        return EmaState(t_out, scale, aux), groups

    def main_losses(
        self, s_out: DetrOutput, state: EmaState, batch: Batch
    ) -> tuple[Losses, Diagnostics]:
        """The main queries' loss: matching distillation, or plain detection when it is off."""
        targets = batch.targets
        losses = encoder_proposal_losses(self.criterion, s_out, targets)
        scale = state.scale["matching"]
        if scale <= 0:
            plain, _ = self.criterion(s_out, targets)
            losses.update(plain)
            return losses, {}
        t_out = state.output
        crit = self.criterion
        weights = crit.weights_for_stages(s_out.num_stages)
        norm = num_boxes(targets, s_out.logits.device)
        matcher = crit.matcher
        same, total, extra = 0, 0, 0
        tokens = s_out.extras.get("selected_tokens")  # two-stage: pair queries by token
        with torch.autocast(batch.images.device.type, enabled=False):
            for k in range(s_out.num_stages):
                own = matcher(s_out.logits[k].float(), s_out.boxes[k].float(), targets)
                theirs = matcher(t_out.logits[k].float(), t_out.boxes[k].float(), targets)
                if tokens is not None:
                    theirs = map_by_token(theirs, t_out.extras["selected_tokens"], tokens)
                terms = matching_distillation_loss(
                    s_out.logits[k],
                    s_out.boxes[k],
                    targets,
                    own,
                    theirs,
                    norm,
                    quality_focal=self.config.matching.classification == "quality_focal",
                    teacher_scale=scale,
                    focal_alpha=crit.focal_alpha,
                    focal_gamma=crit.focal_gamma,
                )
                w = weights[k]
                w_t = self.config.matching.weight
                losses[f"loss_cls_s{k}"] = terms["cls"] * crit.weight_cls * w
                losses[f"loss_bbox_s{k}"] = terms["bbox"] * crit.weight_bbox * w
                losses[f"loss_giou_s{k}"] = terms["giou"] * crit.weight_giou * w
                losses[f"distill_match_bbox_s{k}"] = (
                    terms["teacher_bbox"] * crit.weight_bbox * w * w_t
                )
                losses[f"distill_match_giou_s{k}"] = (
                    terms["teacher_giou"] * crit.weight_giou * w * w_t
                )
                if k == s_out.num_stages - 1:
                    same, total = agreement(own, theirs)
                    extra = sum(len(q) for q, _ in theirs) - same
        diagnostics = {"distill_match_agreement": same / total if total else 1.0}
        diagnostics["distill_match_extra_positives"] = extra / max(total, 1)
        return losses, diagnostics

    def distill_losses(
        self, s_out: DetrOutput, state: EmaState, batch: Batch
    ) -> tuple[Losses, Diagnostics]:
        """Initial-query prediction distillation and auxiliary groups (`distill_*` keys)."""
        t_out, scale = state.output, state.scale
        losses: Losses = {}
        diagnostics = {"ema_decay": self.ema.current_decay()}
        with torch.autocast(batch.images.device.type, enabled=False):
            if scale["initial_query"] > 0:
                losses.update(self._initial_query_terms(s_out, t_out, scale["initial_query"]))
            for group, assignment in state.aux:
                suffix = group.name.removeprefix("od_aux")
                terms, _ = self.aux_criterion(
                    s_out.groups[group.name],
                    batch.targets,
                    indices=assignment,
                    prefix=f"distill_aux{suffix}_",
                    stage_weights=stage_weights(
                        self.config.aux_groups.stage_weights, s_out.num_stages
                    ),
                )
                losses.update({k: v * scale["aux"] for k, v in terms.items()})
        if state.aux:
            counts = [sum(len(q) for q, _ in a) for _, a in state.aux]
            diagnostics["distill_aux_queries"] = sum(counts) / len(batch.targets)
        diagnostics.update(part_totals(losses, ("init", "aux")))
        return losses, diagnostics

    def _initial_query_terms(self, s_out: DetrOutput, t_out: DetrOutput, scale: float) -> Losses:
        cfg = self.config.initial_query
        group = s_out.groups[INIT_GROUP]
        weights = stage_weights(cfg.stage_weights, group.num_stages)
        batch, queries = group.logits.shape[1:3]
        identity = [(torch.arange(queries), torch.arange(queries))] * batch
        losses = {}
        for k in range(group.num_stages):
            if weights[k] == 0:
                continue
            terms, _ = logits_distillation_loss(
                group.logits[k],
                group.boxes[k],
                t_out.logits[k],
                t_out.boxes[k],
                indices=identity,
                weight_class=cfg.cls,
                weight_bbox=cfg.bbox,
                weight_giou=cfg.giou,
                clamp=False,
            )
            for name, value in terms.items():
                losses[f"distill_init_{name}_s{k}"] = value * scale * weights[k]
        return losses
