"""Real MSD volumes and Kvasir images through the bundle's own training and validation transforms."""

import pytest
import torch
from conftest import REPO, shared_data
from monai.bundle import ConfigParser

from samsp_monai.data.datalist import build_datalist

TRAIN = str(REPO / "bundle/configs/train.json")
IMAGE2D = str(REPO / "bundle/configs/image2d.json")


def _pipeline(configs: list[str], key: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(configs)
    for k, v in overrides.items():
        parser[k] = v
    return parser.get_parsed_content(key)


def _items(root, layout: str, n: int) -> list[dict]:
    cases = build_datalist(layout, root)["training"][:n]
    return [{k: str(root / v) for k, v in case.items()} for case in cases]


def test_msd_volumes_give_slices_of_input_size_with_configured_foreground_share():
    root = shared_data("msd-hippocampus")
    transform = _pipeline([TRAIN], "train#preprocessing", slices_per_volume=8, fg_fraction=0.75)
    transform.set_random_state(0)
    for item in _items(root, "msd", 3):
        slices = transform(item)
        assert len(slices) == 8
        assert sum(bool(s["label"].any()) for s in slices) == 6
        for s in slices:
            assert s["image"].shape == s["label"].shape == (1, 256, 256)
            assert s["image"].dtype == torch.float32 and s["label"].dtype == torch.int64
            assert 0.0 <= s["image"].min() and s["image"].max() <= 1.1  # [0, 1] plus up to 10% intensity jitter
            assert set(s["label"].unique().tolist()) <= {0, 1, 2}


def test_msd_validation_keeps_whole_volumes_scaled_to_unit_range():
    root = shared_data("msd-hippocampus")
    item = _pipeline([TRAIN], "validate#preprocessing")(_items(root, "msd", 1)[0])
    assert item["image"].ndim == 4 and item["image"].shape == item["label"].shape
    assert item["image"].min() == 0.0 and item["image"].max() == 1.0


def test_kvasir_images_give_rgb_inputs_and_binary_masks():
    root = shared_data("kvasir-seg")
    transform = _pipeline([TRAIN, IMAGE2D], "train#preprocessing")
    for item in _items(root, "images", 2):
        sample = transform(item)
        assert sample["image"].shape == (3, 256, 256) and sample["label"].shape == (1, 256, 256)
        assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.1
        assert sample["label"].unique().tolist() == [0, 1]


@pytest.mark.parametrize("modality, value, expected", [("CT", 40.0, 0.5), ("RGB", 51.0, 0.2)])
def test_modality_scaling(modality, value, expected):
    from samsp_monai.data.transforms import modality_scaling

    out = modality_scaling("image", modality)({"image": torch.full((1, 2, 2), value)})
    assert torch.allclose(out["image"], torch.tensor(expected))


def test_dicom_series_with_dicom_seg_or_nrrd_label_through_the_bundle_transforms():
    root = shared_data("dicom-ct-seg")
    transform = _pipeline([TRAIN], "validate#preprocessing", modality="CT")
    from_seg = transform({"image": str(root / "ct-3slice"), "label": str(root / "liver.dcm")})
    from_nrrd = transform({"image": str(root / "ct-3slice"), "label": str(root / "liver_seg.nrrd")})
    assert from_seg["image"].shape == from_seg["label"].shape == (1, 512, 512, 3)
    assert torch.equal(from_seg["label"], from_nrrd["label"]) and int(from_seg["label"].sum()) == 107_098
    assert torch.allclose(from_seg["label"].affine, from_nrrd["label"].affine)
    assert 0.0 <= from_seg["image"].min() and from_seg["image"].max() <= 1.0
