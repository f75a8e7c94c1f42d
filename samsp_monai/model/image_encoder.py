"""SAM's ViT image encoder with optional activation checkpointing of its transformer blocks."""

from __future__ import annotations

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import Tensor
from torch.utils.checkpoint import checkpoint


class CheckpointingImageEncoderViT(ImageEncoderViT):
    """`ImageEncoderViT` that can recompute each block's activations in the backward pass instead of storing them.

    With `checkpointing` on, training keeps one activation per block boundary and recomputes the inside of a
    block during backward: far less memory (vit_l/vit_h at 1024) for about one extra encoder forward. The
    modules, and so the state-dict keys, are those of `ImageEncoderViT`; without gradients it is the plain
    forward.
    """

    checkpointing: bool = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        recompute = self.checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return self.neck(x.permute(0, 3, 1, 2))
