"""bundle_root defaults to the folder of the bundle being run, never to a folder inside site-packages."""

from __future__ import annotations

import importlib.util
import shutil
import site
import subprocess
import sys

import pytest
from conftest import REPO

import samsp_monai
from samsp_monai.errors import SAMSPError
from samsp_monai.paths import CHECKOUT_BUNDLE, default_bundle_root

MAIN = str(REPO / ".venv/lib/monai/bundle/__main__.py")  # only its last two parts matter: monai/bundle/__main__.py
PRINT_ROOT = (
    "import samsp_monai; from monai.bundle import ConfigParser; p = ConfigParser(); "
    "p.read_config('configs/train.json'); print(samsp_monai.__file__); print(p.get_parsed_content('bundle_root'))"
)


def test_the_bundle_of_the_command_lines_config_files_is_the_root(tmp_path):
    shutil.copytree(REPO / "bundle/configs", tmp_path / "mybundle/configs")
    stack = f"['{tmp_path}/mybundle/configs/train.json','{tmp_path}/mybundle/configs/demo.json']"
    assert default_bundle_root([MAIN, "run", "training", "--config_file", stack]) == str(tmp_path / "mybundle")
    assert default_bundle_root([MAIN, "run", f"--config_file={tmp_path}/mine.json"]) == str(tmp_path)
    assert default_bundle_root(["pytest"]) == str(CHECKOUT_BUNDLE)  # no bundle command: this checkout's bundle/


def test_a_root_inside_site_packages_is_refused():
    configs = f"{site.getsitepackages()[0]}/bundle/configs/train.json"
    with pytest.raises(SAMSPError, match=r"bundle_root would be .*site-packages/bundle, inside .* pass --bundle_root"):
        default_bundle_root([MAIN, "run", "--config_file", configs])


@pytest.mark.slow
def test_an_installed_package_resolves_the_bundle_it_is_run_from_not_its_own_folder(tmp_path):
    """A real non-editable install (pip install --target) run from a copied bundle folder, as the zoo runs. Slow
    only because the fresh interpreter imports torch and MONAI (30 s on a busy 2-core machine)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "samsp_monai", source / "samsp_monai", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(tmp_path / "site"), str(source)], check=True, capture_output=True, timeout=300)
    shutil.copytree(REPO / "bundle/configs", tmp_path / "mybundle/configs")
    result = subprocess.run(
        [sys.executable, "-c", PRINT_ROOT],
        cwd=tmp_path / "mybundle",
        env={"PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    package, root = result.stdout.split()[-2:]
    assert package.startswith(str(tmp_path / "site")) and root == str(tmp_path / "mybundle")


def test_the_bundles_scripts_module_is_the_installed_package():
    spec = importlib.util.spec_from_file_location("bundle_scripts", REPO / "bundle/scripts/__init__.py")
    scripts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scripts)
    assert scripts.SAMSP is samsp_monai.SAMSP and scripts.__all__ == samsp_monai.__all__


def test_the_bundles_scripts_module_says_how_to_install_a_missing_package(tmp_path):
    shutil.copytree(REPO / "bundle/scripts", tmp_path / "scripts")
    # -S: no site-packages, so samsp_monai is missing, as in a bundle folder copied to a machine without it
    env = {"PATH": "/usr/bin:/bin"}  # and no PYTHONPATH that could lead to a checkout
    command = [sys.executable, "-S", "-c", "import scripts"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "this bundle's code is the samsp_monai package, which is not installed here" in result.stderr
