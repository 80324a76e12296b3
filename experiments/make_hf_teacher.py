"""Write a small, randomly initialised Hugging Face D-FINE detector for the shapes classes to a
model folder, so `quickstart_hf_teacher.yaml` shows the HF-teacher mechanics offline:

    python experiments/make_hf_teacher.py data/hf-dfine-shapes

Its predictions are noise (it is untrained): the run shows the adapter at work (the teacher's
per-stage logits, feature maps and queries reaching every DETRDistill term), not a gain. With
internet, point `teacher.hf` at a real checkpoint instead (e.g. ustc-community/dfine-small-coco).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAPES = ["circle", "square", "triangle"]  # the quickstart's synthetic classes


def build(classes: list[str], seed: int = 0):
    import torch
    import transformers as hf

    torch.manual_seed(seed)
    backbone = hf.RTDetrResNetConfig(
        layer_type="basic",
        depths=[1, 1, 1, 1],
        hidden_sizes=[32, 64, 128, 256],
        embedding_size=32,
        out_features=["stage2", "stage3", "stage4"],
    )
    config = hf.DFineConfig(
        backbone_config=backbone,
        encoder_in_channels=[64, 128, 256],
        d_model=64,
        encoder_hidden_dim=64,
        decoder_in_channels=[64, 64, 64],
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        decoder_layers=3,
        num_queries=30,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        hidden_expansion=0.5,
        id2label=dict(enumerate(classes)),
    )
    return hf.DFineForObjectDetection(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--classes", nargs="+", default=SHAPES)
    args = parser.parse_args()
    build(args.classes).save_pretrained(args.folder)
    # D-FINE's image processor: [0, 1] pixels, no mean/std normalisation
    processor = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False}
    (args.folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    print(
        f"wrote a random-init DFineForObjectDetection ({len(args.classes)} classes) to {args.folder}"
    )


if __name__ == "__main__":
    main()
