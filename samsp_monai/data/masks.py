"""2D masks read by their encoding, or refused: never guessed to be empty.

Masks come as 0/1 or 0/255 greys, palette PNGs, colour images and lossy JPEGs. A fixed threshold after a
conversion to grey reads 0/1 masks, most palettes and dark colours as empty, so `MaskReader` (the label reader
of `image2d.json`) turns each into a map of class indices by this rule (`MaskEncoding`):

- palette (`P`) images: the palette indices are the class indices (index 0 is background);
- grey images (`1`, `L`, `I;16`, ...), and colour images whose channels are equal (grey stored as RGB):
  - lossless files: values within 0..num_classes are class indices (0/1 and label maps); values {0, 255}
    are background/foreground (one class); any other set of values is refused;
  - JPEG (lossy: values spread around the true ones): one class only; thresholded at half the encoding's
    range, 127 when the brightest value exceeds 127 (0/255 masks), else 0.5 (0/1 masks);
- colour images (channels differ): one class only; every pixel that is not black is foreground (for a JPEG,
  every pixel whose brightest channel exceeds 127); a colour mask for several classes is refused, since
  colours carry no class order;
- an alpha channel: fully transparent pixels are background.

Refusals raise `InputDataError` naming the file, what was found and how to convert it. The conversion runs in
`get_data`, not as `PILReader`'s converter in `read`: MONAI's `LoadImage` answers a reader's failure in `read` by
trying its other readers, which would read the refused mask raw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.data import PILReader
from monai.utils import ensure_tuple
from PIL import Image

from .input_checks import InputDataError

GREY_TOLERANCE = 8  # a JPEG stores a grey image in RGB with channels a few levels apart
MAX_LISTED = 10


def _grey_classes(values: np.ndarray, lossy: bool, num_classes: int, source: str) -> np.ndarray:
    if lossy:
        if num_classes > 1:
            raise InputDataError(
                f"label {source}: a JPEG mask for {num_classes} classes; JPEG compression changes class indices, "
                "save the masks as PNG"
            )
        return (values > (127 if values.max(initial=0) > 127 else 0.5)).astype(np.uint8)
    found = np.unique(values)
    if found.max(initial=0) <= num_classes:
        return values.astype(np.uint8)
    if set(found.tolist()) <= {0, 255}:
        return (values == 255).astype(np.uint8)
    shown = ", ".join(str(v) for v in found[:MAX_LISTED]) + (" ..." if len(found) > MAX_LISTED else "")
    raise InputDataError(
        f"label {source}: grey values [{shown}] are neither class indices 0..{num_classes} nor a 0/255 mask; "
        "save the mask as class indices (0 = background) or as 0/255"
    )


class MaskEncoding:
    """`PILReader` converter: a PIL mask of any encoding to an `L` image of class indices (module docstring)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, image: Image.Image) -> Image.Image:
        source = getattr(image, "filename", "") or "<mask without a file name>"
        lossy = image.format == "JPEG"
        if image.mode == "P":
            return Image.fromarray(self._indices(np.asarray(image), source))
        transparent = None
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"))
            transparent = rgba[..., 3] == 0
        if image.mode in ("1", "L", "I", "I;16", "I;16B", "F", "LA"):
            grey = np.asarray(image)
            classes = _grey_classes(grey[..., 0] if grey.ndim == 3 else grey, lossy, self.num_classes, source)
        else:
            rgb = np.asarray(image.convert("RGB")).astype(np.int32)
            spread = int((rgb.max(axis=-1) - rgb.min(axis=-1)).max(initial=0))
            if spread <= (GREY_TOLERANCE if lossy else 0):
                classes = _grey_classes(rgb[..., 0], lossy, self.num_classes, source)
            elif self.num_classes > 1:
                raise InputDataError(
                    f"label {source}: a colour mask for {self.num_classes} classes; colours carry no class order, "
                    "save the mask as class indices (0 = background) or as a palette PNG"
                )
            else:
                classes = (rgb.max(axis=-1) > (127 if lossy else 0)).astype(np.uint8)
        if transparent is not None:
            classes = np.where(transparent, 0, classes).astype(np.uint8)
        return Image.fromarray(classes)

    def _indices(self, indices: np.ndarray, source: str) -> np.ndarray:
        if indices.max(initial=0) > self.num_classes:
            found = np.unique(indices)
            raise InputDataError(
                f"label {source}: palette indices {found.tolist()[:MAX_LISTED]} outside 0..{self.num_classes}; a "
                "palette mask's indices are its classes: set --num_classes, or re-save the mask"
            )
        return indices.astype(np.uint8)


class MaskReader(PILReader):
    """MONAI's `PILReader` for masks: each image converted by `MaskEncoding` (see the module docstring)."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoding = MaskEncoding(num_classes)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        images = [self.encoding(image) for image in ensure_tuple(img)]
        return super().get_data(images if isinstance(img, (list, tuple)) else images[0])
