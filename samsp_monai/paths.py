"""Where the bundle lives, so its configs resolve paths relative to the bundle rather than to the package.

The model zoo writes `"bundle_root": "."` and runs its commands from inside the bundle folder. This bundle is
also run from elsewhere (`--config_file bundle/configs/train.json` from the repository root), and a
non-editable `pip install .` puts the package in site-packages, where a root beside the package would put
`models/` and the demo data into site-packages (lost on the next venv rebuild). So `bundle_root` defaults to
the folder of the bundle being run, decided in this order:

1. the bundle of the config files on the `python -m monai.bundle` command line: the folder above their
   `configs/` folder (the rule MONAI's ConfigWorkflow uses to put a bundle's code on `sys.path`); run from
   inside a bundle folder this is the zoo's ".";
2. the `bundle/` folder of the source checkout this package is imported from (tests, scripts, MONAI Label);
3. the current folder (".", the zoo's convention), for an installed package run without a command line.

A root inside site-packages is refused whichever rule chose it.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from .command_line import command_line_overrides, is_bundle_command
from .errors import SAMSPError

CHECKOUT_BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def installed_package_dirs() -> list[Path]:
    """The folders pip installs packages into (site-packages, dist-packages) for this interpreter."""
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    paths |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return [Path(p).resolve() for p in paths]


def bundle_of_configs(config_file: str) -> Path:
    """The bundle folder of a config file: the folder above `configs/`, else the file's own folder."""
    folder = Path(config_file).resolve().parent
    return folder.parent if folder.name == "configs" else folder


def default_bundle_root(argv: Sequence[str] | None = None) -> str:
    """The bundle folder being run (module docstring); never a folder inside site-packages."""
    argv = sys.argv if argv is None else argv
    files = command_line_overrides(argv[1:])[0] if is_bundle_command(argv) else []
    if files:
        root = bundle_of_configs(files[0])
    elif (CHECKOUT_BUNDLE / "configs").is_dir():
        root = CHECKOUT_BUNDLE
    else:
        root = Path(".").resolve()
    inside = [d for d in installed_package_dirs() if root == d or d in root.parents]
    if inside:
        raise SAMSPError(
            f"bundle_root would be {root}, inside {inside[0]}: models and data written there are lost when the "
            "environment is rebuilt. Run from the bundle folder, or pass --bundle_root DIR"
        )
    return str(root)


def user_cache_dir(name: str) -> Path:
    """`$XDG_CACHE_HOME/samsp_monai/<name>` (`~/.cache/samsp_monai/<name>`): what every run on this machine shares."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "samsp_monai" / name
