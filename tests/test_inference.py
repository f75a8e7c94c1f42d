"""inference.json and evaluate.json on real files: labels come back in the input's geometry."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO, shared_data
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

CONFIGS = REPO / "bundle/configs"
SMALL = {"sam_variant": "vit_test", "image_size": 64}


def _save_random_model(configs: list[str], bundle_root) -> None:
    """A model.pt as training writes it, from the config's own network_def (random weights)."""
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(SMALL)
    network = parser.get_parsed_content("network_def")
    (bundle_root / "models").mkdir(parents=True)
    torch.save({"model": network.state_dict()}, bundle_root / "models/model.pt")


def _run(configs: list[str], bundle_root, **overrides) -> None:
    wf = ConfigWorkflow(config_file=configs, workflow_type=None, bundle_root=str(bundle_root), **SMALL, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()


def test_volume_labels_have_the_input_shape_and_affine(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "hippocampus_001.nii.gz").symlink_to(shared_data("msd-hippocampus") / "imagesTr/hippocampus_001.nii.gz")
    oblique = np.array([[0, -1.2, 0, 10], [-0.9, 0, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])  # not RAS, anisotropic
    nib.save(nib.Nifti1Image(np.random.rand(30, 24, 7).astype(np.float32), oblique), inputs / "oblique.nii.gz")
    configs = [str(CONFIGS / "inference.json")]
    _save_random_model(configs, tmp_path)
    _run(configs, tmp_path, dataset_dir=str(inputs), spacing=[1.0, 1.0, 1.0])
    for name in ("hippocampus_001", "oblique"):
        image, label = nib.load(inputs / f"{name}.nii.gz"), nib.load(tmp_path / f"eval/{name}_seg.nii.gz")
        assert label.shape == image.shape
        np.testing.assert_allclose(label.affine, image.affine, atol=1e-5)
        assert set(np.unique(label.get_fdata())) <= {0, 1, 2} and label.get_data_dtype() == np.uint8


def test_2d_images_give_png_masks_of_the_input_size(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    images = sorted((shared_data("kvasir-seg") / "images").iterdir())[:2]
    for path in images:
        (inputs / path.name).symlink_to(path)
    configs = [str(CONFIGS / "inference.json"), str(CONFIGS / "image2d.json")]
    _save_random_model(configs, tmp_path)
    _run(configs, tmp_path, dataset_dir=str(inputs))
    for path in images:
        mask = Image.open(tmp_path / f"eval/{path.stem}_seg.png")
        assert mask.size == Image.open(path).size and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_evaluation_writes_per_case_metrics_summary_and_overlays(tmp_path):
    root = shared_data("msd-hippocampus")
    cases = ["hippocampus_001", "hippocampus_003"]
    datalist = {"validation": [{"image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.nii.gz"} for c in cases]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    configs = [str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")]
    _save_random_model(configs, tmp_path)
    _run(configs, tmp_path, dataset_dir=str(root), datalist_file=str(tmp_path / "datalist.json"))
    rows = (tmp_path / "eval/metrics_per_case.csv").read_text().splitlines()
    assert rows[0].startswith("case,class_name,class_id,status,dice,iou,hd95_mm") and len(rows) == 1 + 2 * 2
    summary = json.loads((tmp_path / "eval/metrics_summary.json").read_text())
    assert 0.0 <= summary["overall"]["dice"] <= 1.0 and summary["overall"]["hd95_mm"] > 0
    assert sorted(p.name for p in (tmp_path / "eval/overlays").iterdir()) == [f"{c}.png" for c in cases]


@pytest.mark.slow
def test_monai_verify_net_in_out_command():
    cmd = "verify_net_in_out --net_id network_def --meta_file bundle/configs/metadata.json"
    cmd += " --config_file bundle/configs/inference.json"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *cmd.split()], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0 and "verified with no error" in result.stdout + result.stderr
