"""How an image of any size maps to SAM's square input and how logits map back: stretch, or SAM's own way.

- `stretch`: the image is resized to img_size x img_size (aspect ratio not kept) and the low-resolution
  logits are interpolated straight to the original size.
- `sam`: as `segment_anything` does it, the longest side is resized to img_size (`ResizeLongestSide`), the
  image sits top-left and is padded to a square; logits are upsampled in two steps as in
  `Sam.postprocess_masks` (to img_size, crop the padding, then to the original size).

One difference from SAM: padding is intensity 0 (black) in the [0, 1] range, before SAM's normalisation,
where SAM pads with its pixel mean. Black is what the training transforms can pad single-channel slices
with, so training and inference see the same pixels, and for MR/CT it matches the images' own background.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor

Geometry = Literal["stretch", "sam"]
GEOMETRIES = ("stretch", "sam")


def content_shape(size: Sequence[int], img_size: int, geometry: Geometry) -> tuple[int, int]:
    """The (h, w) the image content occupies inside the img_size x img_size model input."""
    if geometry == "stretch":
        return img_size, img_size
    if geometry == "sam":
        return ResizeLongestSide.get_preprocess_shape(int(size[0]), int(size[1]), img_size)
    raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")


def to_model_frame(x: Tensor, img_size: int, geometry: Geometry, mode: str = "bilinear") -> Tensor:
    """(B, C, H, W) -> (B, C, img_size, img_size): resized as `geometry` says, padded bottom/right with 0."""
    h, w = content_shape(x.shape[-2:], img_size, geometry)
    # Stretch always interpolates (an identity at img_size) so the input size stays symbolic in torch.export.
    if geometry == "stretch" or tuple(x.shape[-2:]) != (h, w):
        # SAM resizes with antialiasing (`ResizeLongestSide.apply_image_torch`); stretch keeps plain bilinear.
        smooth = {"align_corners": False, "antialias": geometry == "sam"} if mode == "bilinear" else {}
        x = F.interpolate(x, size=(h, w), mode=mode, **smooth)
    if (h, w) != (img_size, img_size):
        x = F.pad(x, (0, img_size - w, 0, img_size - h))
    return x


def from_model_frame(logits: Tensor, size: Sequence[int], img_size: int, geometry: Geometry) -> Tensor:
    """Low-resolution logits (B, N, h, w) of the model input -> (B, N, *size) on the original image."""
    size = tuple(size)
    if geometry == "sam":
        h, w = content_shape(size, img_size, geometry)
        logits = F.interpolate(logits, size=(img_size, img_size), mode="bilinear", align_corners=False)
        logits = logits[..., :h, :w]
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
