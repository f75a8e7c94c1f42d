"""Transforms that turn volumes into the 2D slices SAM works on."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
    Randomizable,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from monai.transforms.traits import MultiSampleTrait
from monai.utils import convert_to_tensor

from ..model.geometry import Geometry, content_shape, to_model_frame


class RandSliced(Randomizable, MapTransform, MultiSampleTrait):
    """Sample `num_samples` 2D slices along spatial `axis` of channel-first volumes, as a list of dicts.

    `round(fg_fraction * num_samples)` slices show foreground of `label_key` and the rest show none, so a
    prompt-free model also learns to say "nothing here". Slicing happens inside the pipeline because
    MONAI Label hands the trainer whole volumes. When a volume lacks one kind of slice, the other fills in.
    Slices are drawn without replacement while a kind has enough of them; when it has fewer slices than
    requested, every one is taken before any repeats (each appears equally often, give or take one), so the
    foreground share stays as configured.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        axis: int = 2,
        num_samples: int = 4,
        fg_fraction: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        self.label_key, self.axis, self.num_samples, self.fg_fraction = label_key, axis, num_samples, fg_fraction
        self.indices: list[int] = []

    def randomize(self, label: torch.Tensor | np.ndarray) -> None:
        foreground = torch.as_tensor(label).ne(0).any(dim=0)
        others = tuple(d for d in range(foreground.ndim) if d != self.axis)
        has_fg = foreground.any(dim=others).cpu().numpy()
        fg, bg = np.flatnonzero(has_fg), np.flatnonzero(~has_fg)
        n_fg = round(self.fg_fraction * self.num_samples)
        if not len(bg):
            n_fg = self.num_samples
        elif not len(fg):
            n_fg = 0
        picks = np.concatenate([self._draw(fg, n_fg), self._draw(bg, self.num_samples - n_fg)])
        self.indices = [int(i) for i in picks]

    def _draw(self, pool: np.ndarray, n: int) -> np.ndarray:
        """`n` of `pool`: distinct while the pool lasts, then each slice once more before any a third time."""
        if n == 0:
            return np.empty(0, dtype=np.int64)
        rounds, rest = divmod(n, len(pool))
        return np.concatenate(
            [self.R.permutation(pool) for _ in range(rounds)] + [self.R.choice(pool, rest, replace=False)]
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        d = dict(data)
        self.randomize(d[self.label_key])
        samples = []
        for index in self.indices:
            sample = dict(d)
            for key in self.key_iterator(d):
                sample[key] = d[key].select(self.axis + 1, index)
            sample["slice_index"] = index
            samples.append(sample)
        return samples


class ToModelFramed(MapTransform):
    """Bring training slices to the network's square input exactly as the network does it at inference.

    Uses the network's own `geometry.to_model_frame` (images bilinear, labels nearest), so a slice that
    reaches the network already framed passes its preprocessing unchanged: train and inference see the same
    pixels. With `geometry="sam"` the label's padding is background.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_size: int,
        geometry: Geometry = "stretch",
        mode: Sequence[str] | str = ("bilinear", "nearest"),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        content_shape((1, 1), image_size, geometry)  # rejects an unknown geometry at construction
        self.image_size, self.geometry = image_size, geometry
        self.mode = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            x = convert_to_tensor(d[key], track_meta=False)
            framed = to_model_frame(x[None].float(), self.image_size, self.geometry, mode)[0]
            d[key] = framed.to(x.dtype)
        return d


def modality_scaling(keys: KeysCollection, modality: str, ct_window: Sequence[float] = (-160.0, 240.0)) -> MapTransform:
    """Intensities to [0, 1] as suits the modality, before SAM's own normalisation in the network.

    CT: a fixed Hounsfield window (default abdomen/liver, -160..240 HU), so tissue keeps its absolute meaning;
    MR: the 0.5/99.5 percentiles of each volume, since MR intensities have no absolute scale;
    RGB: 0..255 to 0..1.
    """
    modality = modality.upper()
    if modality == "CT":
        low, high = ct_window
        return ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    if modality == "MR":
        return ScaleIntensityRangePercentilesd(keys, lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    if modality == "RGB":
        return ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)
    raise ValueError(f"modality must be 'CT', 'MR' or 'RGB', got {modality!r}")
