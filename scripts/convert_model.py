"""Convert a model.pt of the old nested form (`{"model": state_dict, "network_args": ..., "epoch": ...}`) into the
current one: the plain state dict in model.pt, which MONAI's `bundle.load`, `ckpt_export` and MONAI Label read, and
its record in model.json beside it (logic: samsp_monai.model_file).

The old form recorded no preprocessing settings (modality, slice axis, spacing, ...); they are taken from the config
stack the model was trained with, given as for `python -m monai.bundle run` (default: the bundle's train.json).

Usage:
    python scripts/convert_model.py bundle/models/model.pt
    python scripts/convert_model.py run1/models/model.pt --config_file bundle/configs/train.json \\
        bundle/configs/image2d.json --modality CT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from samsp_monai.command_line import key_value_overrides
from samsp_monai.model_file import RECORDED_SETTINGS, convert_nested
from samsp_monai.paths import default_bundle_root

BUNDLE = Path(default_bundle_root())


def config_settings(config_files: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """The resolved `settings` of a config stack after the overrides (its keys that need data are not resolved)."""
    parser = ConfigParser()
    parser.read_config(config_files)
    parser.update(overrides)
    return {k: parser.get_parsed_content(k) for k in RECORDED_SETTINGS if k in parser}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the old nested model.pt; rewritten in place, model.json written beside it")
    parser.add_argument("--config_file", nargs="+", default=[str(BUNDLE / "configs/train.json")])
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = key_value_overrides(rest)
    except ValueError as e:
        parser.error(str(e))
    written = convert_nested(args.model, config_settings(args.config_file, overrides))
    print(f"converted {args.model} to a plain state dict; its record is {written}")


if __name__ == "__main__":
    sys.exit(main())
