"""Contrastive denoising (CDN, from DINO and RT-DETR): noised copies of the ground truth enter
the decoder as a training-time query group whose assignment to the ground truth is known.

Each denoising group holds two copies of every GT box of an image: a positive (small box noise,
trained to reconstruct the GT) and a negative (larger box noise, trained as background). Groups
sit in front of the matching queries; the self-attention mask keeps the matching queries blind
to them, so no GT information leaks into the Hungarian-matched part.

Use with a decoder that takes a `[N+Q, N+Q]` blocking mask (True = may not attend):

    group = make_denoising_group(targets, label_embedding, num_classes, num_queries)
    content = cat([group.content, content], 1); anchors = cat([group.anchors, anchors], 1)
    ... decoder(content, anchors, ..., self_attn_mask=group.attn_mask) ...
    dn_logits, logits = group.split(stage_logits, dim=2)   # [L,B,N+Q,C] -> N | Q
    losses |= denoising_losses(criterion, dn_outputs, group, targets, num_boxes(targets, dev))

`label_embedding` is `nn.Embedding(num_classes + 1, D, padding_idx=num_classes)`: the last row
stands for the padded slots of images with fewer GT boxes than the batch maximum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_convert

from detr_models.box_ops import cxcywh_to_xyxy
from detr_models.criterion import SetCriterion
from detr_models.matcher import Assignment
from detr_models.output import StageOutputs

# Anchors stay this far inside (0, 1), so their inverse sigmoid is finite. A negative whose
# corners crossed (possible when both move inwards by more than half the box) collapses to this
# width, as in the reference, where inverse_sigmoid clamps the negative width to its epsilon.
ANCHOR_EPS = 1e-4


@dataclass
class DenoisingGroup:
    """The denoising queries of one batch and what the losses need to supervise them.

    content         [B,N,D]  label embeddings of the noised labels
    anchors         [B,N,4]  noised boxes, normalised cxcywh, inside (0, 1)
    labels          [B,N]    the noised labels (num_classes on padded slots)
    attn_mask       [N+Q,N+Q] bool, True = blocked; denoising queries first, then the Q
                    matching queries (see `denoising_attn_mask`)
    num_groups      G, copies of the whole GT set
    group_size      S = 2 * max GT count of the batch; N = G * S. Slot j < S/2 of a group is
                    the positive copy of GT j, slot S/2 + j its negative copy; slots of GT
                    indices an image lacks are padding.
    positive_index  per image (query indices [n_b*G], target indices [n_b*G]), int64 on the
                    CPU, sorted by query: the fixed assignment of positives to GT, in the form
                    of `SetCriterion`'s `indices`. Negatives and padding are background.
    """

    content: torch.Tensor
    anchors: torch.Tensor
    labels: torch.Tensor
    attn_mask: torch.Tensor
    num_groups: int
    group_size: int
    positive_index: list[Assignment]

    @property
    def num_denoising(self) -> int:
        """N, the number of denoising queries (all groups, padding included)."""
        return self.num_groups * self.group_size

    def split(self, x: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a tensor over the `N+Q` query axis into (denoising part, matching part)."""
        n = self.num_denoising
        return x.narrow(dim, 0, n), x.narrow(dim, n, x.shape[dim] - n)


def denoising_attn_mask(
    num_denoising_total: int,
    num_queries: int,
    group_size: int,
    dn_sees_matching: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Self-attention blocking mask `[N+Q, N+Q]` (True = may not attend), denoising first.

    Matching queries never see denoising queries (they would leak the GT); each denoising group
    sees only itself. Denoising queries see the matching queries, as in DINO and RT-DETR; with
    `dn_sees_matching=False` they do not, and the mask is block-diagonal.
    """
    if group_size < 1 or num_denoising_total % group_size:
        raise ValueError(
            f"num_denoising_total ({num_denoising_total}) must be a multiple of "
            f"group_size ({group_size})"
        )
    n = num_denoising_total
    mask = torch.zeros((n + num_queries, n + num_queries), dtype=torch.bool, device=device)
    mask[n:, :n] = True
    group_of = torch.arange(n, device=device) // group_size  # [N]
    mask[:n, :n] = group_of[:, None] != group_of[None, :]
    if not dn_sees_matching:
        mask[:n, n:] = True
    return mask


def noised_corners(
    boxes: torch.Tensor,
    negative: torch.Tensor,
    box_noise_scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The CDN box noise: xyxy corners `[...,4]` of cxcywh `boxes` `[...,4]`, not clipped.

    Every corner moves by a random sign times u * box_noise_scale * (half the box width for x,
    half its height for y), with u uniform in [0, 1) for positives and in [1, 2) where the
    boolean `negative` `[...]` is set: negatives lie outside the range of the positives.
    """
    half = torch.cat([boxes[..., 2:], boxes[..., 2:]], -1) * 0.5  # [..., 4]: w, h, w, h
    magnitude = _uniform(boxes.shape, generator, boxes.device) + negative[..., None].to(boxes)
    sign = _randint(0, 2, boxes.shape, generator, boxes.device).to(boxes) * 2.0 - 1.0
    return cxcywh_to_xyxy(boxes) + sign * magnitude * half * box_noise_scale


def make_denoising_group(
    targets: Sequence[dict],
    label_embedding: nn.Embedding,
    num_classes: int,
    num_queries: int,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
    dn_sees_matching: bool = True,
) -> DenoisingGroup | None:
    """Noised positive and negative copies of the GT of a batch, or None without any GT box.

    targets[b] has `labels` [n_b] (in [0, num_classes)) and `boxes` [n_b,4] normalised cxcywh.
    G = max(1, num_denoising // max_b n_b) groups. Labels (positives and negatives) change to
    a uniform random class with probability label_noise_ratio / 2; boxes get `noised_corners`,
    clipped to the image. Random numbers come from `generator` (on its own device) if given.
    Tensors are on the device of `label_embedding`.
    """
    counts = [len(t["labels"]) for t in targets]
    max_gt = max(counts, default=0)
    if num_denoising <= 0 or max_gt == 0:
        return None
    if label_embedding.num_embeddings != num_classes + 1:
        raise ValueError(
            f"label_embedding has {label_embedding.num_embeddings} rows; it needs "
            f"num_classes + 1 = {num_classes + 1} (the last one for padded slots)"
        )
    device = label_embedding.weight.device
    batch = len(targets)
    num_groups = max(1, num_denoising // max_gt)

    labels = torch.full((batch, max_gt), num_classes, dtype=torch.int64, device=device)
    boxes = torch.zeros((batch, max_gt, 4), device=device)
    real = torch.zeros((batch, max_gt), dtype=torch.bool, device=device)
    for b, t in enumerate(targets):
        labels[b, : counts[b]] = t["labels"].to(device)
        boxes[b, : counts[b]] = t["boxes"].to(device, torch.float32)
        real[b, : counts[b]] = True
    # One sync; a label out of range would otherwise embed as padding or fail on the device.
    if bool(((labels[real] < 0) | (labels[real] >= num_classes)).any()):
        raise ValueError(f"target labels must lie in [0, {num_classes})")

    # [B, G, 2, M]: group, positive (0) / negative (1) copy, GT slot.
    shape = (batch, num_groups, 2, max_gt)
    labels = labels[:, None, None].expand(shape)
    boxes = boxes[:, None, None].expand(*shape, 4)
    real = real[:, None, None].expand(shape)
    negative = torch.tensor([False, True], device=device)[None, None, :, None].expand(shape)

    flip = (_uniform(shape, generator, device) < label_noise_ratio * 0.5) & real
    labels = torch.where(flip, _randint(0, num_classes, shape, generator, device), labels)
    corners = noised_corners(boxes, negative, box_noise_scale, generator).clamp(0.0, 1.0)
    anchors = box_convert(corners, in_fmt="xyxy", out_fmt="cxcywh")
    anchors = anchors.clamp(ANCHOR_EPS, 1.0 - ANCHOR_EPS)  # [B, G, 2, M, 4]

    group_size = 2 * max_gt
    labels = labels.reshape(batch, num_groups * group_size)  # [B, N]
    positive_index = []
    for n in counts:
        query = torch.arange(num_groups)[:, None] * group_size + torch.arange(n)[None]  # [G, n]
        positive_index.append((query.flatten(), torch.arange(n).repeat(num_groups)))
    return DenoisingGroup(
        content=label_embedding(labels),  # [B, N, D]
        anchors=anchors.reshape(batch, num_groups * group_size, 4),  # [B, N, 4]
        labels=labels,
        attn_mask=denoising_attn_mask(
            num_groups * group_size, num_queries, group_size, dn_sees_matching, device
        ),
        num_groups=num_groups,
        group_size=group_size,
        positive_index=positive_index,
    )


def denoising_losses(
    criterion: SetCriterion,
    outputs: StageOutputs,
    group: DenoisingGroup,
    targets: Sequence[dict],
    num_boxes: float,
    prefix: str = "dn_",
) -> dict[str, torch.Tensor]:
    """The detection loss of the denoising queries' outputs `[L,B,N,...]` on every stage.

    The positives' fixed assignment replaces matching; negatives and padding are background.
    Normalised by num_boxes * num_groups, as in the reference (each GT is supervised G times).
    """
    losses, _ = criterion(
        outputs,
        targets,
        indices=group.positive_index,
        prefix=prefix,
        num_boxes=num_boxes * group.num_groups,
    )
    return losses


def _uniform(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """U[0, 1) on `device`, drawn on the generator's device so a CPU generator works anywhere."""
    source = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=source).to(device)


def _randint(
    low: int,
    high: int,
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return torch.randint(low, high, tuple(shape), generator=generator, device=source).to(device)
