"""Fold a trained SAM-SP's LoRA into its base weights and write one file that loads without peft
(logic: samsp_monai.serving.export). The network is rebuilt from what the model records (the model.json beside
model.pt, or an old nested model.pt), as inference does; only a plain model.pt without a record is described by the
bundle config plus `--key value` overrides, as for `python -m monai.bundle run` (an override that contradicts a record
is refused). Load the result with `samsp_monai.serving.export.load_merged(path)`. With `--program`, the merged network
is also exported with `torch.export` (dynamic batch) for deployment without samsp_monai.

Usage:
    python scripts/export_merged.py                        # bundle/models/model.pt -> bundle/models/model_merged.pt
    python scripts/export_merged.py --model run1/model.pt --out run1/merged.pt    # network from run1/model.json
    python scripts/export_merged.py --model own.pt --sam_variant vit_l --lora_layout q_v   # a model.pt without record
    python scripts/export_merged.py --program bundle/models/model.pt2 --input_size 256 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from samsp_monai.command_line import key_value_overrides
from samsp_monai.errors import SAMSPError
from samsp_monai.model.network import SERVING_ARGS
from samsp_monai.model_file import load_model
from samsp_monai.paths import default_bundle_root
from samsp_monai.serving.export import (
    export_merged,
    export_program,
    load_merged,
    recorded_network_args,
    save_program,
)

BUNDLE = Path(default_bundle_root())


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", nargs="+", default=[str(BUNDLE / "configs/inference.json")])
    parser.add_argument("--model", default=str(BUNDLE / "models/model.pt"), help="trained checkpoint to merge")
    parser.add_argument("--out", default=str(BUNDLE / "models/model_merged.pt"), help="merged file to write")
    parser.add_argument("--program", help="also write the torch.export program (.pt2) of the merged network here")
    parser.add_argument(
        "--input_size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="example in-plane size for --program (default image_size x image_size); with geometry 'sam' the "
        "program only accepts this size",
    )
    args, rest = parser.parse_known_args(argv)
    try:
        return args, key_value_overrides(rest)
    except ValueError as e:
        parser.error(str(e))


def network_args(config_files: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """The resolved arguments of the config's `network_def` (SAMSP), after the overrides, without the serving
    ones (runtime, cache): the merged network is plain PyTorch."""
    parser = ConfigParser()
    parser.read_config(config_files)
    parser.update(overrides)
    names = [k for k in parser["network_def"] if k != "_target_" and k not in SERVING_ARGS]
    return {k: parser.get_parsed_content(f"network_def#{k}") for k in names}


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    if not Path(args.model).is_file():
        raise SAMSPError(f"{args.model}: no trained model there; train first or pass --model <file>")
    model = load_model(args.model)
    chosen = recorded_network_args(model, network_args(args.config_file, overrides), overrides)
    out = export_merged(model, chosen, args.out)
    written = [str(out)]
    if args.program:
        net = load_merged(out)
        size = args.input_size or (net.img_size, net.img_size)
        written.append(str(save_program(export_program(net, torch.rand(2, net.in_channels, *size)), args.program)))
    print(f"merged LoRA of {args.model} into plain SAM weights: wrote {', '.join(written)}")


if __name__ == "__main__":
    sys.exit(main())
