"""The batch contract between data, models and distillation: padded images, their pixel mask
and one target dict per image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# A target: "boxes" [N,4] normalised cxcywh of the unpadded image, "labels" [N] in 0..K-1,
# "size" [2] (height, width) of the unpadded image, "image_id"; crowd boxes under "iscrowd".
Target = dict[str, Any]


@dataclass
class Batch:
    """A padded batch: `images [B,3,H,W]`, `pixel_mask [B,H,W]` (True on padding), targets."""

    images: torch.Tensor
    pixel_mask: torch.Tensor
    targets: list[Target]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move images, mask and every tensor of the targets to `device`."""
        targets = [
            {
                k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
                for k, v in t.items()
            }
            for t in self.targets
        ]
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.pixel_mask.to(device, non_blocking=non_blocking),
            targets,
        )

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this on custom batch types.
        targets = [
            {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in t.items()}
            for t in self.targets
        ]
        return Batch(self.images.pin_memory(), self.pixel_mask.pin_memory(), targets)

    def __len__(self) -> int:
        return len(self.targets)
