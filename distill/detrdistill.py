"""DETRDistill (Chang et al., ICCV 2023): offline teacher -> student distillation with
A. Hungarian-matching logits distillation stage by stage, B. target-aware feature distillation
and C. query-prior assignment distillation (see shared/METHODS.md).

The objective runs the frozen teacher on the same batch, the student with the teacher's
queries as an extra group, and returns the student's detection losses plus every weighted,
scheduled distillation term (`distill_*` keys) and diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from detr_models.batch import Batch
from detr_models.config import ModelConfig
from detr_models.criterion import SetCriterion
from detr_models.output import DetrOutput, QueryGroup
from distill.config import DETRDistillConfig
from distill.contrastive import contrastive_query_loss
from distill.feature_distill import FeatureAdapter, feature_distillation_loss, target_aware_mask
from distill.hf_teacher import TeacherProfile
from distill.logits_distill import logits_distillation_loss
from distill.objective import Diagnostics, Losses, Progress, TrainingObjective
from distill.query_prior import GROUP_NAME, QueryTranslator, teacher_assignments
from distill.schedules import map_stages, part_totals, stage_weights


@dataclass
class TeacherState:
    """What `prepare` hands to the losses: the teacher's output and each term's scale now."""

    output: DetrOutput
    scale: dict[str, float]


class DETRDistill(TrainingObjective):
    """The DETRDistill training objective. Its own parameters are the adapters (feature 1x1
    convs, query translators), which train with the student and are not part of it."""

    def __init__(
        self,
        teacher: nn.Module,
        teacher_config: ModelConfig | TeacherProfile,
        student_config: ModelConfig,
        criterion: SetCriterion,
        config: DETRDistillConfig,
        teacher_classes: list[int] | None = None,
    ) -> None:
        super().__init__(criterion)
        # the classes the teacher knows; the others get no logits distillation
        self.teacher_classes = teacher_classes
        teacher.eval().requires_grad_(False)
        self.teacher = [teacher]  # a list hides it from .parameters() and .state_dict()
        self.config = config
        self.student_stages = student_config.decoder_layers
        self.teacher_stages = teacher_config.decoder_layers
        t_strides, s_strides = teacher_config.feature_strides, student_config.feature_strides
        # levels pair up by stride; unmatched levels are not distilled
        self.level_pairs = [
            (s_strides.index(s), t_strides.index(s)) for s in s_strides if s in t_strides
        ]
        if config.feature.enabled and not self.level_pairs:
            raise ValueError(
                f"distill.feature: student levels (strides {s_strides}) share no stride with the "
                f"teacher's ({t_strides}); give them a common level or disable the feature term"
            )
        width_t, width_s = teacher_config.hidden_dim, student_config.hidden_dim
        self.feature_adapters = nn.ModuleList(
            FeatureAdapter(width_s, width_t) for _ in self.level_pairs
        )
        self.contrastive_adapter = (
            nn.Linear(width_s, width_t)
            if config.contrastive.enabled and width_s != width_t
            else nn.Identity()
        )
        self.query_translator = QueryTranslator(
            width_t, teacher_config.query_kind, width_s, student_config.query_kind
        )
        prior = config.query_prior
        self.prior_criterion = SetCriterion(
            criterion.num_classes,
            criterion.matcher,
            prior.cls,
            prior.bbox,
            prior.giou,
            criterion.focal_alpha,
            criterion.focal_gamma,
            stage_weights(prior.stage_weights, self.student_stages),
        )
        if config.last_teacher_stage:
            self.stage_map = [self.teacher_stages - 1] * self.student_stages
        else:
            self.stage_map = map_stages(self.student_stages, self.teacher_stages)

    @property
    def teacher_model(self) -> nn.Module:
        return self.teacher[0]

    def scales(self, progress: Progress) -> dict[str, float]:
        """Each term's weight x schedule now (0 when disabled)."""
        cfg = self.config
        return {
            "logits": cfg.logits.scale(progress),
            "feature": cfg.feature.scale(progress),
            "query_prior": cfg.query_prior.scale(progress),
            "contrastive": cfg.contrastive.scale(progress),
        }

    def prepare(self, batch: Batch, progress: Progress) -> tuple[TeacherState, list[QueryGroup]]:
        """Run the teacher on the batch: its output, and the query-prior group to add."""
        scale = self.scales(progress)
        teacher = self.teacher_model
        teacher.eval()
        with torch.no_grad():
            t_out = teacher(batch.images, batch.pixel_mask)
        groups = [self.query_translator(t_out)] if scale["query_prior"] > 0 else []
        return TeacherState(t_out, scale), groups

    def distill_losses(
        self, s_out: DetrOutput, state: TeacherState, batch: Batch
    ) -> tuple[Losses, Diagnostics]:
        """Every weighted DETRDistill term (`distill_*` keys) and diagnostics."""
        cfg = self.config
        t_out, scale = state.output, state.scale
        losses: Losses = {}
        diagnostics: Diagnostics = {}
        # the distillation terms compute in float32 even under bf16 autocast (summed BCE costs)
        with torch.autocast(batch.images.device.type, enabled=False):
            if scale["logits"] > 0:
                losses.update(self._logits_terms(s_out, t_out, scale["logits"], diagnostics))
            if scale["feature"] > 0:
                losses.update(
                    self._feature_terms(s_out, t_out, batch, scale["feature"], diagnostics)
                )
            if scale["query_prior"] > 0:
                losses.update(
                    self._query_prior_terms(s_out, t_out, batch.targets, scale["query_prior"])
                )
                if scale["contrastive"] > 0:
                    student_hidden = self.contrastive_adapter(
                        s_out.groups[GROUP_NAME].hidden[-1].float()
                    )
                    losses["distill_contrastive"] = scale["contrastive"] * contrastive_query_loss(
                        student_hidden, t_out.hidden[-1], cfg.contrastive.temperature
                    )
        diagnostics.update(part_totals(losses, ("logits", "feature", "prior")))
        return losses, diagnostics

    def _logits_terms(
        self, s_out: DetrOutput, t_out: DetrOutput, scale: float, diagnostics: Diagnostics
    ) -> Losses:
        cfg = self.config.logits
        weights = stage_weights(cfg.stage_weights, self.student_stages)
        losses, scores = {}, []
        s_logits, t_logits = s_out.logits, t_out.logits
        if self.teacher_classes is not None:
            s_logits = s_logits[..., self.teacher_classes]
            t_logits = t_logits[..., self.teacher_classes]
        for k, t in enumerate(self.stage_map):
            if weights[k] == 0:
                continue
            terms, indices = logits_distillation_loss(
                s_logits[k],
                s_out.boxes[k],
                t_logits[t],
                t_out.boxes[t],
                weight_class=cfg.cls,
                weight_bbox=cfg.bbox,
                weight_giou=cfg.giou,
            )
            for name, value in terms.items():
                losses[f"distill_logits_{name}_s{k}"] = value * scale * weights[k]
            probs = t_out.logits[t].sigmoid().max(-1).values  # [B,Qt]
            scores += [probs[b, j.to(probs.device)] for b, (_, j) in enumerate(indices)]
        if scores:
            diagnostics["distill_teacher_score"] = torch.cat(scores).mean().detach()
        return losses

    def _feature_terms(
        self,
        s_out: DetrOutput,
        t_out: DetrOutput,
        batch: Batch,
        scale: float,
        diagnostics: Diagnostics,
    ) -> Losses:
        cfg = self.config.feature
        weights = stage_weights(cfg.stage_weights, self.teacher_stages)
        gt = [t["boxes"] for t in batch.targets]
        losses, coverage = {}, []
        for j in range(self.teacher_stages):
            if weights[j] == 0:
                continue
            total = 0.0
            for adapter, (ls, lt) in zip(self.feature_adapters, self.level_pairs, strict=True):
                t_feat, mask = t_out.features[lt], t_out.feature_masks[lt]
                psi = target_aware_mask(
                    t_out.logits[j],
                    t_out.boxes[j],
                    t_out.hidden[j],
                    t_feat,
                    gt,
                    top_k=cfg.top_k,
                    floor=cfg.floor,
                    feature_mask=mask,
                )
                coverage.append(psi[~mask].mean())
                total = total + feature_distillation_loss(
                    adapter(s_out.features[ls].float()), t_feat, psi, mask
                )
            losses[f"distill_feature_s{j}"] = total * scale * weights[j]
        if coverage:
            diagnostics["distill_feature_mask_mean"] = torch.stack(coverage).mean().detach()
        return losses

    def _query_prior_terms(
        self, s_out: DetrOutput, t_out: DetrOutput, targets: list, scale: float
    ) -> Losses:
        assignments = teacher_assignments(t_out, targets, self.criterion.matcher)
        # the query prior always follows the even stage mapping (last_teacher_stage is for A)
        per_stage = [assignments[t] for t in map_stages(self.student_stages, self.teacher_stages)]
        terms, _ = self.prior_criterion(
            s_out.groups[GROUP_NAME], targets, indices=per_stage, prefix="distill_prior_"
        )
        return {k: v * scale for k, v in terms.items()}
