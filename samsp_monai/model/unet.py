"""A MONAI UNet that takes and returns what SAMSP does, so the bundle trains and scores it as a baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import Tensor, nn


class ResizingUNet(nn.Module):
    """MONAI `UNet` behind SAMSP's interface: any input size in, (B, num_classes + 1, H, W) class logits out.

    Inputs are resized to `img_size` (as SAMSP resizes them to its encoder size), so whole validation images
    of any size and small volume slices pass through the bundle's unchanged inferers; the logits are resized
    back to the input size. A baseline arm of `scripts/benchmark_quality.py` swaps it in as `network_def`.
    """

    def __init__(
        self,
        img_size: int = 256,
        num_classes: int = 1,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
    ) -> None:
        super().__init__()
        if img_size % 2 ** len(strides):
            raise ValueError(f"img_size {img_size} must be a multiple of {2 ** len(strides)} (UNet strides)")
        self.img_size = img_size
        self.unet = UNet(2, in_channels, num_classes + 1, channels, strides, num_res_units=num_res_units)

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[-2:])
        if size != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        logits = self.unet(x)
        if size != (self.img_size, self.img_size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits
