"""Write a MONAI datalist JSON for an MSD, DICOM or 2D image/mask folder (logic: samsp_monai.data.datalist).

Usage:
    python scripts/make_datalist.py msd ../shared/data/msd-hippocampus -o datalist.json
    python scripts/make_datalist.py dicom ../shared/data/dicom-ct-seg --label_glob liver_seg.nrrd -o dl.json
    python scripts/make_datalist.py images ../shared/data/kvasir-seg -o datalist.json
    python scripts/make_datalist.py images ../shared/data/kvasir-seg -o small.json --limit 20   # a quick trial
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from samsp_monai.data.datalist import build_datalist, write_json_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("root", type=Path, help="data root; datalist paths are stored relative to it")
    common.add_argument("-o", "--output", type=Path, required=True, help="datalist JSON to write")
    common.add_argument("--val_fraction", type=float, default=0.2, help="random split share (default 0.2)")
    common.add_argument("--seed", type=int, default=0, help="random split seed (default 0)")
    common.add_argument("--train_list", type=Path, help="training case names, one a line")
    common.add_argument("--val_list", type=Path, help="validation case names, one a line")
    common.add_argument(
        "--limit", type=int, help="keep N cases, chosen with --seed, in the split's proportions (a quick trial)"
    )
    layouts = parser.add_subparsers(dest="layout", required=True)
    layouts.add_parser("msd", parents=[common], help="imagesTr/ + labelsTr/ NIfTI, matched by file name")
    dicom = layouts.add_parser("dicom", parents=[common], help="DICOM series folders + label files")
    dicom.add_argument(
        "--label_glob",
        default="{series}.*",
        help="label path relative to ROOT; {series} is the series folder name (default '{series}.*')",
    )
    images = layouts.add_parser("images", parents=[common], help="2D images/ + masks/, matched by stem")
    images.add_argument("--images_dir", default="images", help="image folder under ROOT")
    images.add_argument("--masks_dir", default="masks", help="mask folder under ROOT")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = vars(parse_args(argv))
    output = args.pop("output")
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    try:
        datalist = build_datalist(**args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    write_json_atomic(datalist, output)
    print(f"{output}: {len(datalist['training'])} training, {len(datalist['validation'])} validation")


if __name__ == "__main__":
    main()
