"""metadata.json as the model zoo checks it offline: one schema with its keys, installable packages, numeric
metrics, and `verify_net_in_out` for every documented task."""

from __future__ import annotations

import importlib.metadata
import json

import monai
import pytest
import torch
from conftest import REPO
from monai.bundle import verify_net_in_out

CONFIGS = REPO / "bundle/configs"
META = json.loads((CONFIGS / "metadata.json").read_text())
# The keys meta_schema_20240725 requires (the schema itself is downloaded by the zoo's verify_metadata, which
# cannot run offline); MONAI 1.6.1 renames the older optional_packages_version to required_packages_version.
REQUIRED = [
    "version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "name", "task", "description", "authors", "copyright", "network_data_format",
]  # fmt: skip
TASKS = {  # documented task: (config files, metadata files)
    "hippocampus (default)": (["inference.json"], ["metadata.json"]),
    "demo": (["inference.json", "demo.json"], ["metadata.json"]),
    "2D polyps (image2d)": (["inference.json", "image2d.json"], ["metadata.json", "metadata_image2d.json"]),
}


def test_metadata_is_on_one_schema_with_its_required_keys():
    assert META["schema"].endswith("/meta_schema_20240725.json")
    assert [k for k in REQUIRED if k not in META] == [] and "optional_packages_version" not in META
    assert META["version"] in META["changelog"]
    assert META["monai_version"] == monai.__version__
    assert META["pytorch_version"] == torch.__version__.split("+")[0]
    assert all(isinstance(v, float) for v in META["eval_metrics"].values()) and META["eval_metrics"]


def test_every_listed_package_is_this_environments_registry_install():
    """Installed at the listed version from a package index (no direct_url.json: not a folder, git or editable
    install); samsp-monai is on no registry, so it is not listed (the model card says how to install it)."""
    packages = META["required_packages_version"]
    assert "samsp-monai" not in packages
    installed = {name: importlib.metadata.version(name) for name in packages}
    assert installed == packages
    assert [n for n in packages if importlib.metadata.distribution(n).read_text("direct_url.json")] == []


@pytest.mark.parametrize("task", TASKS)
def test_verify_net_in_out_passes_for_each_documented_task(task):
    configs, metas = TASKS[task]
    verify_net_in_out(
        net_id="network_def",
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=[str(CONFIGS / m) for m in metas],
        device="cpu",
        sam_variant="vit_test",  # the smallest SAM: the check is on channels, shapes and dtype, not on size
    )


def test_the_2d_tasks_metadata_describes_its_classes():
    merged = monai.bundle.ConfigParser.load_config_files([str(CONFIGS / m) for m in TASKS["2D polyps (image2d)"][1]])
    names = json.loads((CONFIGS / "image2d.json").read_text())["class_names"]
    assert merged["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", **names}
    assert {k: v["name"] for k, v in merged["class_codes"].items()} == names
    assert merged["network_data_format"]["inputs"]["image"]["num_channels"] == 3
