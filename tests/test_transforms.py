from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from samsp_monai import ensure_demo_dataset
from samsp_monai.data.transforms import RandSliced


def _volume_with_fg_slices(fg_slices: list[int], depth: int = 10) -> dict:
    label = torch.zeros(1, 8, 6, depth)
    for z in fg_slices:
        label[0, 2:4, 1:3, z] = 1
    image = torch.arange(8 * 6 * depth, dtype=torch.float32).reshape(1, 8, 6, depth)
    return {"image": image, "label": label}


@pytest.mark.parametrize("fg_fraction, n_fg", [(0.75, 6), (0.5, 4), (0.0, 0), (1.0, 8)])
def test_slices_have_the_configured_foreground_share(fg_fraction, n_fg):
    t = RandSliced(["image", "label"], axis=2, num_samples=8, fg_fraction=fg_fraction)
    t.set_random_state(0)
    samples = t(_volume_with_fg_slices([3, 4, 5]))
    assert len(samples) == 8
    assert all(s["image"].shape == (1, 8, 6) and s["label"].shape == (1, 8, 6) for s in samples)
    assert sum(bool(s["label"].any()) for s in samples) == n_fg
    data = _volume_with_fg_slices([3, 4, 5])
    assert all(torch.equal(s["image"], data["image"][..., s["slice_index"]]) for s in samples)


@pytest.mark.parametrize("seed", range(20))
def test_slices_are_distinct_when_the_volume_has_enough(seed):
    t = RandSliced(["image", "label"], axis=2, num_samples=6, fg_fraction=0.5)
    t.set_random_state(seed)
    indices = [s["slice_index"] for s in t(_volume_with_fg_slices([3, 4, 5]))]
    assert sorted(indices[:3]) == [3, 4, 5]  # all three foreground slices, once each
    assert len(set(indices[3:])) == 3 and not set(indices[3:]) & {3, 4, 5}


def test_too_few_slices_repeat_evenly_and_keep_the_foreground_share():
    t = RandSliced(["image", "label"], axis=2, num_samples=8, fg_fraction=0.5)
    t.set_random_state(0)
    samples = t(_volume_with_fg_slices([2, 3], depth=4))
    indices = [s["slice_index"] for s in samples]
    assert sorted(indices) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sum(bool(s["label"].any()) for s in samples) == 4


def test_slicing_along_another_axis():
    t = RandSliced(["image", "label"], axis=0, num_samples=3, fg_fraction=1.0)
    samples = t(_volume_with_fg_slices([1]))
    assert all(s["image"].shape == (1, 6, 10) and s["slice_index"] in (2, 3) for s in samples)


def test_volume_without_background_slices_fills_in_with_foreground():
    t = RandSliced(["image", "label"], num_samples=4, fg_fraction=0.25)
    assert all(s["label"].any() for s in t(_volume_with_fg_slices(list(range(10)))))


def test_demo_dataset_is_written_once_with_two_classes(tmp_path):
    root = Path(ensure_demo_dataset(tmp_path / "demo", num_cases=3, num_validation=1))
    datalist = (root / "datalist.json").read_text()
    assert '"validation"' in datalist
    label = nib.load(root / "labelsTr/demo_000.nii.gz")
    image = nib.load(root / "imagesTr/demo_000.nii.gz").get_fdata()
    values = np.unique(label.get_fdata())
    assert values.tolist() == [0, 1, 2] and image.shape == label.shape
    assert image[label.get_fdata() == 2].mean() > image[label.get_fdata() == 0].mean()
    mtime = (root / "datalist.json").stat().st_mtime_ns
    ensure_demo_dataset(root, num_cases=3, num_validation=1)
    assert (root / "datalist.json").stat().st_mtime_ns == mtime


def test_demo_dataset_written_by_two_processes_at_once_is_whole(tmp_path):
    with ProcessPoolExecutor(2) as pool:
        roots = list(pool.map(ensure_demo_dataset, [tmp_path / "demo"] * 2, [3, 3], [1, 1]))
    assert roots == [str(tmp_path / "demo")] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging folder left behind
    assert len(list((tmp_path / "demo/imagesTr").iterdir())) == 3
