"""The DETR set-prediction loss on every decoder stage: focal classification, L1 and GIoU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from detr_models.box_ops import cxcywh_to_xyxy
from detr_models.config import LossConfig, MatcherConfig
from detr_models.matcher import Assignment, HungarianMatcher
from detr_models.output import DetrOutput, StageOutputs


def num_boxes(targets: Sequence[dict], device: torch.device | str) -> float:
    """The loss normaliser: target boxes in the batch, averaged over workers, at least 1.

    Every worker divides by the same number, so gradients average like one big batch (the DETR
    convention). Call it on every worker: it is a collective when a process group is up.
    """
    count = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(float(count.item()), 1.0)


# forward() takes a `num_boxes=` keyword, which shadows the function inside it.
_count_boxes = num_boxes


def total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: the sum of the (already weighted) entries of a loss dict."""
    if not losses:
        raise ValueError("cannot total an empty loss dict")
    return torch.stack([v.float() for v in losses.values()]).sum()


def one_hot_targets(
    logits: torch.Tensor, targets: Sequence[dict], indices: Sequence[Assignment]
) -> torch.Tensor:
    """Classification targets `[B,Q,C]` (dtype of logits): 1 at each matched query's GT class.

    Unmatched queries stay all-zero, i.e. background under sigmoid focal loss.
    """
    out = torch.zeros_like(logits)  # [B, Q, C]
    batch_idx, query_idx = _flat_query_index(indices, logits.device)
    if batch_idx.numel():
        labels = torch.cat(
            [
                t["labels"][tgt.to(t["labels"].device)]
                for t, (_, tgt) in zip(targets, indices, strict=True)
            ]
        ).to(logits.device)  # [N]
        out[batch_idx, query_idx, labels.long()] = 1.0
    return out


class SetCriterion(nn.Module):
    """Detection loss of DETR-family models, applied to each decoder stage.

    Per stage k: Hungarian matching (or a fixed assignment), then
      loss_cls_s{k}  = weight_cls  * sum sigmoid_focal_loss(logits, targets) / num_boxes
      loss_bbox_s{k} = weight_bbox * sum |b - g|_1 over matched pairs / num_boxes
      loss_giou_s{k} = weight_giou * sum (1 - GIoU(b, g)) over matched pairs / num_boxes
    each also multiplied by stage_weights[k]. All returned values are weighted, so the training
    loss is `sum(losses.values())` (see `total`).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_cls: float = 2.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        stage_weights: Sequence[float] | None = None,
        classification: str = "focal",
        varifocal_alpha: float = 0.75,
    ) -> None:
        super().__init__()
        if classification not in ("focal", "varifocal"):
            raise ValueError(f"classification must be focal or varifocal, got {classification!r}")
        self.classification = classification
        self.varifocal_alpha = varifocal_alpha
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_cls = weight_cls
        self.weight_bbox = weight_bbox
        self.weight_giou = weight_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.stage_weights = None if stage_weights is None else [float(w) for w in stage_weights]

    def forward(
        self,
        outputs: StageOutputs,
        targets: Sequence[dict],
        indices: Sequence | None = None,
        class_targets: torch.Tensor | None = None,
        prefix: str = "",
        num_boxes: float | None = None,
        stage_weights: Sequence[float] | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[list[Assignment]]]:
        """Weighted losses of every stage and the per-stage assignments they used.

        indices: a fixed assignment instead of matching; either one per-image list used for
            every stage, or a list of L per-stage lists.
        class_targets: float `[L,B,Q,C]` or `[B,Q,C]` (every stage); replaces the one-hot
            classification targets (soft targets for distillation).
        num_boxes: the normaliser; computed with `num_boxes(targets, device)` when omitted.
        stage_weights: per-stage weights for this call only (default: the criterion's own).
        Returns `(losses, indices)` with keys `{prefix}loss_{cls,bbox,giou}_s{k}`, k = 0..L-1,
        and `indices[k]` the per-image assignment of stage k.
        """
        logits, boxes = outputs.logits, outputs.boxes  # [L,B,Q,C], [L,B,Q,4]
        if logits.ndim != 4 or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"logits must be [L, B, Q, {self.num_classes}], got {list(logits.shape)}"
            )
        if boxes.shape != (*logits.shape[:3], 4):
            raise ValueError(
                f"boxes must be [L, B, Q, 4] = {[*logits.shape[:3], 4]}, got {list(boxes.shape)}"
            )
        num_stages, batch = logits.shape[0], logits.shape[1]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
        stage_weights = self.weights_for_stages(num_stages, stage_weights)
        fixed = _per_stage_indices(indices, num_stages, batch)
        soft = _per_stage_class_targets(class_targets, logits.shape)
        norm = float(num_boxes) if num_boxes is not None else _count_boxes(targets, logits.device)

        losses: dict[str, torch.Tensor] = {}
        used: list[list[Assignment]] = []
        for k in range(num_stages):
            stage_idx = (
                fixed[k] if fixed is not None else self.matcher(logits[k], boxes[k], targets)
            )
            used.append(stage_idx)
            cls, l1, giou = self._stage_losses(
                logits[k], boxes[k], targets, stage_idx, None if soft is None else soft[k], norm
            )
            w = stage_weights[k]
            losses[f"{prefix}loss_cls_s{k}"] = cls * (self.weight_cls * w)
            losses[f"{prefix}loss_bbox_s{k}"] = l1 * (self.weight_bbox * w)
            losses[f"{prefix}loss_giou_s{k}"] = giou * (self.weight_giou * w)
        return losses, used

    def _stage_losses(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        targets: Sequence[dict],
        indices: Sequence[Assignment],
        class_targets: torch.Tensor | None,
        norm: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unweighted (classification, L1, GIoU) losses of one stage, each divided by `norm`."""
        # float32: focal loss and GIoU areas lose too much in half precision.
        logits = logits.float()  # [B, Q, C]
        boxes = boxes.float()  # [B, Q, 4]
        batch_idx, query_idx = _flat_query_index(indices, boxes.device)
        if batch_idx.numel() == 0:
            # Zero, but still a function of the boxes so DDP sees every parameter used; the
            # nan_to_num keeps a diverged (NaN) prediction from turning this zero into NaN.
            zero = boxes.nan_to_num().sum() * 0.0
            l1 = giou = iou = None
        else:
            src = boxes[batch_idx, query_idx]  # [N, 4]
            tgt = torch.cat(
                [
                    t["boxes"][j.to(t["boxes"].device)]
                    for t, (_, j) in zip(targets, indices, strict=True)
                ]
            ).to(src)  # [N, 4]
            src_xyxy, tgt_xyxy = cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)
            l1 = F.l1_loss(src, tgt, reduction="sum") / norm
            giou = generalized_box_iou_loss(src_xyxy, tgt_xyxy, reduction="sum") / norm
            iou = box_iou(src_xyxy, tgt_xyxy).diagonal().detach().nan_to_num(0.0)  # [N]
        if class_targets is None:
            class_targets = one_hot_targets(logits, targets, indices)  # [B, Q, C]
            if self.classification == "varifocal":
                cls = (
                    varifocal_loss(
                        logits,
                        class_targets,
                        batch_idx,
                        query_idx,
                        iou,
                        self.varifocal_alpha,
                        self.focal_gamma,
                    )
                    / norm
                )
                return (cls, l1, giou) if l1 is not None else (cls, zero, zero.clone())
        cls = (
            sigmoid_focal_loss(
                logits,
                class_targets.to(logits),
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                reduction="none",
            ).sum()
            / norm
        )
        return (cls, l1, giou) if l1 is not None else (cls, zero, zero.clone())

    def weights_for_stages(
        self, num_stages: int, override: Sequence[float] | None = None
    ) -> list[float]:
        weights = self.stage_weights if override is None else [float(w) for w in override]
        if weights is None:
            return [1.0] * num_stages
        if len(weights) != num_stages:
            raise ValueError(
                f"stage_weights has {len(weights)} entries but the outputs have "
                f"{num_stages} decoder stages; give exactly {num_stages} weights (one per stage)"
            )
        return weights


def varifocal_loss(
    logits: torch.Tensor,
    one_hot: torch.Tensor,
    batch_idx: torch.Tensor,
    query_idx: torch.Tensor,
    iou: torch.Tensor | None,
    alpha: float = 0.75,
    gamma: float = 2.0,
) -> torch.Tensor:
    """VarifocalNet's IoU-aware classification loss, summed (RT-DETR's `loss_vfl`).

    The target of a matched query's GT class is the IoU of its box with the GT (detached);
    everything else is 0. BCE on the logits, weighted by that target on positives and by
    alpha * p^gamma on negatives (p the predicted probability, detached)."""
    score = torch.zeros_like(logits)
    if iou is not None and batch_idx.numel():
        score[batch_idx, query_idx] = one_hot[batch_idx, query_idx] * iou.to(logits)[:, None]
    prob = logits.sigmoid().detach()
    weight = alpha * prob.pow(gamma) * (1 - one_hot) + score
    return F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="sum")


def _flat_query_index(
    indices: Sequence[Assignment], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, query index) of every matched pair of the batch, each `[N]` int64."""
    batch_idx = torch.cat(
        [torch.full((len(q),), b, dtype=torch.int64) for b, (q, _) in enumerate(indices)]
    )
    query_idx = torch.cat([torch.as_tensor(q, dtype=torch.int64).cpu() for q, _ in indices])
    return batch_idx.to(device), query_idx.to(device)


def _is_pair(item: object) -> bool:
    """Whether `item` is one image's (query_idx, target_idx), not a list of them."""
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and all(isinstance(x, torch.Tensor) for x in item)
    )


def _per_stage_indices(
    indices: Sequence | None, num_stages: int, batch: int
) -> list[list[Assignment]] | None:
    """Normalise a fixed assignment to L per-image lists of int64 tensor pairs, or None."""
    if indices is None:
        return None
    if len(indices) == 0:
        raise ValueError("indices is empty; pass None to match, or one pair per image")
    if _is_pair(indices[0]):
        stages = [indices] * num_stages
    else:
        if len(indices) != num_stages:
            raise ValueError(
                f"per-stage indices have {len(indices)} stages but the outputs have {num_stages}"
            )
        stages = list(indices)
    normalised: list[list[Assignment]] = []
    for k, stage in enumerate(stages):
        if len(stage) != batch or not all(_is_pair(p) for p in stage):
            raise ValueError(
                f"indices of stage {k} must be {batch} (query_idx, target_idx) tensor pairs, "
                "one per image"
            )
        pairs = [(q.long(), t.long()) for q, t in stage]
        if any(len(q) != len(t) for q, t in pairs):
            raise ValueError(f"indices of stage {k}: query_idx and target_idx differ in length")
        normalised.append(pairs)
    return normalised


def _per_stage_class_targets(
    class_targets: torch.Tensor | None, logits_shape: torch.Size
) -> torch.Tensor | None:
    """Soft targets as `[L,B,Q,C]` (a `[B,Q,C]` tensor is shared by every stage), or None."""
    if class_targets is None:
        return None
    if class_targets.ndim == 3 and class_targets.shape == logits_shape[1:]:
        class_targets = class_targets.unsqueeze(0).expand(logits_shape)  # [L, B, Q, C]
    if class_targets.shape != logits_shape:
        raise ValueError(
            f"class_targets must be [L,B,Q,C] = {list(logits_shape)} or [B,Q,C], "
            f"got {list(class_targets.shape)}"
        )
    return class_targets


def encoder_proposal_losses(
    criterion: SetCriterion, out: DetrOutput, targets: list[dict]
) -> dict[str, torch.Tensor]:
    """Set losses on a two-stage model's per-token encoder predictions (empty otherwise).

    One logit per token (the reference two-stage) is class-agnostic: every box is of class 0.
    """
    if "enc_logits" not in out.extras:
        return {}
    logits = out.extras["enc_logits"]
    proposals = StageOutputs(logits[None], out.extras["enc_boxes"][None], None, None, None, None)
    if logits.shape[-1] == 1 and criterion.num_classes != 1:
        targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
        criterion = SetCriterion(
            1,
            criterion.matcher,
            criterion.weight_cls,
            criterion.weight_bbox,
            criterion.weight_giou,
            criterion.focal_alpha,
            criterion.focal_gamma,
        )
    # one stage here, whatever the decoder's stage weights are
    losses, _ = criterion(proposals, targets, prefix="enc_", stage_weights=[1.0])
    return losses


def build_criterion(num_classes: int, matcher: MatcherConfig, loss: LossConfig) -> SetCriterion:
    """The criterion (with its Hungarian matcher) of a matcher and a loss config."""
    return SetCriterion(
        num_classes,
        HungarianMatcher(**matcher.model_dump()),
        loss.cls,
        loss.bbox,
        loss.giou,
        stage_weights=loss.stage_weights,
        classification=loss.classification,
    )
