"""A synthetic MR-like data set the demo writes on first use: no download, and easy enough to learn in minutes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

DATALIST = "datalist.json"


def ensure_demo_dataset(root: str | Path, num_cases: int = 16, num_validation: int = 4, seed: int = 0) -> str:
    """Write `num_cases` NIfTI volumes with labels and a datalist under `root` unless it is there; return `root`.

    Each volume holds one ellipsoid split into two classes along its long axis, like the anterior (1) and
    posterior (2) hippocampus of MSD Task04, with distinct intensities over smooth bias and noise.
    The folder appears by one atomic rename, so an interrupted first run never leaves half a data set behind,
    and processes that start together (the ranks of a distributed run) all end up with the same one.
    """
    root = Path(root)
    if (root / DATALIST).is_file():
        return str(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(num_cases):
        image, label = synthetic_case(rng)
        affine = np.diag([1.0, 1.0, 1.5, 1.0])
        names = {"image": f"imagesTr/demo_{i:03d}.nii.gz", "label": f"labelsTr/demo_{i:03d}.nii.gz"}
        for key, array, dtype in (("image", image, np.float32), ("label", label, np.uint8)):
            (staging / names[key]).parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array.astype(dtype), affine), staging / names[key])
        cases.append(names)
    datalist = {"training": cases[num_validation:], "validation": cases[:num_validation]}
    (staging / DATALIST).write_text(json.dumps(datalist, indent=2))
    try:
        os.replace(staging, root)
    except OSError:  # another process renamed its identical copy into place first
        shutil.rmtree(staging)
        if not (root / DATALIST).is_file():
            raise
    return str(root)


def synthetic_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (64, 64, 20)
) -> tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair: a two-class ellipsoid in a noisy, bias-field background."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    centre = rng.uniform([20, 20, 7], [44, 44, 13])
    radii = rng.uniform([8, 12, 4], [13, 18, 6])
    inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1.0
    label = np.where(inside, np.where(grid[..., 1] < centre[1], 1, 2), 0).astype(np.uint8)
    bias = 1.0 + 0.2 * np.sin(grid[..., 0] / shape[0] * np.pi + rng.uniform(0, np.pi))
    image = np.choose(label, [300.0, 700.0, 1000.0]) * bias + rng.normal(0, 60.0, shape)
    return image.astype(np.float32), label
