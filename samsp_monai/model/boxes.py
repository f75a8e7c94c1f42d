"""Self-prompting boxes: the min/max extent of a predicted mask, per image and per class."""

from __future__ import annotations

import torch
from torch import Tensor


def masks_to_boxes(masks: Tensor, scale: int = 1) -> tuple[Tensor, Tensor]:
    """Boxes (..., 4) as (x0, y0, x1, y1) around all foreground of bool `masks` (..., H, W), and an empty flag.

    One box spans every component of a class (the paper's min/max rule). Coordinates are pixel indices of an
    image `scale` times larger than the mask, covering the whole of each low-resolution pixel. Empty masks
    get the whole-image box; callers decide with the flag whether to use it.
    """
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)
    empty = ~rows.any(-1)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    # Device-side only (no tensors built from Python lists), so a CUDA stream never waits on the host.
    y0 = torch.where(rows, ys, h).amin(-1).masked_fill(empty, 0)
    y1 = torch.where(rows, ys, -1).amax(-1).masked_fill(empty, h - 1)
    x0 = torch.where(cols, xs, w).amin(-1).masked_fill(empty, 0)
    x1 = torch.where(cols, xs, -1).amax(-1).masked_fill(empty, w - 1)
    boxes = torch.stack([x0 * scale, y0 * scale, x1 * scale + scale - 1, y1 * scale + scale - 1], -1)
    return boxes.float(), empty


def jitter_boxes(boxes: Tensor, fraction: float, max_std: float, size: int) -> Tensor:
    """SAM's training noise for box prompts: each coordinate moves by a Gaussian whose std is `fraction` of
    the box side along its axis, capped at `max_std` pixels; the result stays inside a `size` square image
    and keeps x0 <= x1, y0 <= y1. `fraction=0` returns the boxes unchanged.
    """
    if fraction == 0:
        return boxes
    wh = boxes[..., 2:] - boxes[..., :2] + 1
    side = torch.cat([wh, wh], -1)
    noisy = (boxes + torch.randn_like(boxes) * (fraction * side).clamp(max=max_std)).clamp(0, size - 1)
    lo, hi = torch.minimum(noisy[..., :2], noisy[..., 2:]), torch.maximum(noisy[..., :2], noisy[..., 2:])
    return torch.cat([lo, hi], -1)
