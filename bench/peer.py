"""This product's models against Hugging Face transformers at the same config and weights:
one training step (forward, the set loss with auxiliary stages on both, backward, AdamW) and
one eval forward, per architecture, in interleaved rounds.

    python -m bench.peer [--archs ...] [--size 320] [--batch 2] [--rounds 6]

R-50 sizes (d_model 256, 6 + 6 layers, 8 heads, the papers' queries and feed-forward widths,
80 classes), random weights imported into ours with `detrdistill import`'s code, synthetic
images with 5 random boxes each. transformers freezes its whole native ResNet (a quirk of its
freezing rule); here its stages 2-4 train, as ours do (`frozen_stages: 1`), and its attention
and activation dropout are set to the official repos' 0.1, as ours are, so both steps do the
same work. Targets: training step <= 0.9x transformers', eval forward <= 1.0x.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.common import interleaved_times, target_row, verdict, write_results
from detr_models.batch import Batch
from detr_models.config import LossConfig, MatcherConfig
from detr_models.criterion import build_criterion, total
from detr_models.pretrained.hf_folder import import_hf
from distill.objective import DetectionObjective, Progress
from tests.hf_reference import as_pipeline_pixels

ARCHS = ("deformable_refine", "conditional_detr", "dab_detr", "detr", "rtdetr_v2")
TRAIN_TARGET, EVAL_TARGET = 0.9, 1.0


def hf_config(arch: str):
    import transformers as hf

    if arch == "rtdetr_v2":  # RT-DETRv2-R18 (the release's sizes), denoising and aux losses on
        backbone = hf.RTDetrResNetConfig(
            layer_type="basic",
            depths=[2, 2, 2, 2],
            hidden_sizes=[64, 128, 256, 512],
            out_features=["stage2", "stage3", "stage4"],
        )
        return hf.RTDetrV2ForObjectDetection, hf.RTDetrV2Config(
            backbone_config=backbone,
            encoder_in_channels=[128, 256, 512],
            hidden_expansion=0.5,
            decoder_layers=3,
            num_labels=80,
        )

    backbone = hf.ResNetConfig(
        out_features=["stage2", "stage3", "stage4"] if arch.startswith("deformable") else ["stage4"]
    )
    common = {
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 8,
        "decoder_attention_heads": 8,
        "num_labels": 80,
        "auxiliary_loss": True,
        # the official repos' (and ours): dropout 0.1 on attention weights, after the
        # feed-forward activation and on each residual branch (transformers defaults the
        # first two to 0)
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.1,
        "backbone_config": backbone,
    }
    if arch == "deformable_refine":
        return hf.DeformableDetrForObjectDetection, hf.DeformableDetrConfig(
            d_model=256,
            encoder_ffn_dim=1024,
            decoder_ffn_dim=1024,
            num_queries=300,
            with_box_refine=True,
            **common,
        )
    if arch == "dab_detr":
        return hf.DabDetrForObjectDetection, hf.DabDetrConfig(
            hidden_size=256, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_queries=300, **common
        )
    cls, config = {
        "conditional_detr": (hf.ConditionalDetrForObjectDetection, hf.ConditionalDetrConfig),
        "detr": (hf.DetrForObjectDetection, hf.DetrConfig),
    }[arch]
    queries = 300 if arch == "conditional_detr" else 100
    return cls, config(
        d_model=256, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_queries=queries, **common
    )


def build_pair(arch: str):
    """(transformers model, ours) with the same weights, both in train mode."""
    cls, config = hf_config(arch)
    torch.manual_seed(0)
    reference = cls(config)
    with tempfile.TemporaryDirectory() as folder:
        # auxiliary_loss changes the older DETRs' forward; the import refuses it, so save without
        config.auxiliary_loss = arch == "rtdetr_v2"
        reference.save_pretrained(folder)
        config.auxiliary_loss = True
        ours = import_hf(Path(folder)).model
    frozen = ("embedder",) if arch == "rtdetr_v2" else ("embedder", ".stages.0.")
    for name, param in reference.named_parameters():  # train what ours trains
        if "backbone" in name:
            param.requires_grad_(not any(part in name for part in frozen))
    return reference.train(), ours.train()


def batch(size: int, count: int, generator: torch.Generator):
    pixels = torch.randn(count, 3, size, size, generator=generator)
    targets = []
    for _ in range(count):
        centres = torch.rand(5, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(5, 2, generator=generator) * 0.3 + 0.05
        labels = torch.randint(0, 80, (5,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat((centres, sizes), 1)})
    return pixels, targets


def cases(arch: str, size: int, count: int):
    reference, ours = build_pair(arch)
    pixels, targets = batch(size, count, torch.Generator().manual_seed(0))
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    mask = torch.zeros(count, size, size, dtype=torch.bool)
    loss = LossConfig(classification="varifocal", cls=1.0) if arch == "rtdetr_v2" else LossConfig()
    objective = DetectionObjective(build_criterion(80, MatcherConfig(), loss))
    data = Batch(pixels, mask, targets)
    if arch == "rtdetr_v2":  # ours takes ImageNet-normalised pixels, as the pipeline gives them
        data = Batch(as_pipeline_pixels(arch, pixels), mask, targets)
    hf_optim = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], 1e-5)
    our_optim = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], 1e-5)

    def hf_step():
        hf_optim.zero_grad(set_to_none=True)
        reference(pixel_values=pixels, labels=hf_labels).loss.backward()
        hf_optim.step()

    def our_step():
        our_optim.zero_grad(set_to_none=True)
        # the product's training objective: set loss, encoder proposals, denoising
        losses, _ = objective(ours, data, Progress(0, 0, 1, 1))
        total(losses).backward()
        our_optim.step()

    @torch.no_grad()
    def hf_eval():
        reference.eval()(pixel_values=pixels)
        reference.train()

    @torch.no_grad()
    def our_eval():
        ours.eval()(data.images, mask)
        ours.train()

    return {"hf_train": hf_step, "our_train": our_step, "hf_eval": hf_eval, "our_eval": our_eval}


def main() -> None:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--name", default="peer_cpu", help="result file name")
    args = parser.parse_args()
    rows, targets = [], []
    for arch in args.archs:
        times = interleaved_times(cases(arch, args.size, args.batch), args.rounds)
        median = {name: statistics.median(values) for name, values in times.items()}
        train = median["our_train"] / median["hf_train"]
        evaluate = median["our_eval"] / median["hf_eval"]
        rows.append(
            (
                arch,
                f"{median['hf_train']:.0f}",
                f"{median['our_train']:.0f}",
                f"{train:.2f}",
                f"{median['hf_eval']:.0f}",
                f"{median['our_eval']:.0f}",
                f"{evaluate:.2f}",
            )
        )
        depth = "R-18" if arch == "rtdetr_v2" else "R-50"
        where = f"{arch} {depth}, batch {args.batch} at {args.size} px, CPU"
        targets.append(
            target_row(
                f"training step <= {TRAIN_TARGET}x transformers', {where}",
                f"{train:.2f}",
                verdict(train, TRAIN_TARGET),
            )
        )
        targets.append(
            target_row(
                f"eval forward <= {EVAL_TARGET}x transformers', {where}",
                f"{evaluate:.2f}",
                verdict(evaluate, EVAL_TARGET),
            )
        )
    header = ("architecture", "HF step ms", "ours ms", "ratio", "HF eval ms", "ours ms", "ratio")
    write_results(
        args.name,
        "Side by side with Hugging Face transformers (same config and weights)",
        {"transformers": transformers.__version__, **vars(args)},
        {"median of interleaved rounds": (header, rows)},
        notes=[
            "Step: forward, the set loss with every auxiliary stage, backward, AdamW; eval: a "
            "no-grad forward. transformers' DETR uses its softmax cross-entropy loss, ours the "
            "sigmoid focal loss on the same head. RT-DETRv2: R-18 sizes, varifocal loss, 100 "
            "denoising queries and the encoder's loss on both."
        ],
        targets=targets,
    )


if __name__ == "__main__":
    main()
