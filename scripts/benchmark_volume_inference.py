"""Issue-3 numbers: slice-wise volume inference throughput and peak memory for sw_batch_size 1 vs 8.

Each measurement runs in its own process (so peak memory belongs to that setting alone), alternating
settings over repeats because this machine is noisy; compare the ratio, not absolute numbers across runs.
The volumes are real MSD hippocampus MR volumes when ../shared/data is present, else synthetic demo ones.

    python scripts/benchmark_volume_inference.py [--variant vit_demo --image_size 128 --device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.inferers import SliceInferer
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from samsp_monai import SAMSP, ensure_demo_dataset
from samsp_monai.data.transforms import modality_scaling

REPO = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "msd-hippocampus" / "imagesTr"


def volumes(count: int) -> list[str]:
    if HIPPOCAMPUS.is_dir():
        return [str(p) for p in sorted(HIPPOCAMPUS.glob("hippocampus_*.nii.gz"))[:count]]
    root = Path(ensure_demo_dataset(Path(tempfile.gettempdir()) / "samsp-demo-data"))
    return [str(p) for p in sorted((root / "imagesTr").glob("*.nii.gz"))[:count]]


@torch.no_grad()
def measure(args: argparse.Namespace) -> dict[str, float]:
    """Slices per second and peak memory of one sw_batch_size, in this process."""
    load = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", "RAS"),
            modality_scaling("image", "MR"),
        ]
    )
    images = [load({"image": f})["image"].as_tensor()[None].to(args.device) for f in volumes(args.volumes)]
    net = SAMSP(args.variant, img_size=args.image_size, num_classes=2, in_channels=1).to(args.device).eval()
    inferer = SliceInferer(roi_size=(-1, -1), spatial_dim=2, sw_batch_size=args.sw_batch_size, progress=False)
    inferer(images[0], net)  # warm-up
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for image in images:
        inferer(image, net)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    slices = sum(image.shape[-1] for image in images)
    result = {
        "slices_per_s": slices / elapsed,
        "slices": slices,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before,
    }
    if args.device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_demo")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sw_batch_size", type=int, help="measure this one setting in this process (internal)")
    args = parser.parse_args()
    if args.sw_batch_size is not None:
        print(json.dumps(measure(args)))
        return
    runs: dict[int, list[dict[str, float]]] = {b: [] for b in args.batch_sizes}
    for _ in range(args.repeats):
        for b in args.batch_sizes:
            cmd = [
                sys.executable,
                __file__,
                "--sw_batch_size",
                str(b),
                "--variant",
                args.variant,
                "--image_size",
                str(args.image_size),
                "--volumes",
                str(args.volumes),
                "--device",
                args.device,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[b].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"{args.variant} at {args.image_size}, {args.volumes} volumes ({runs[args.batch_sizes[0]][0]['slices']} "
        f"axial slices), device {args.device}, torch {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    gpu = args.device.startswith("cuda")
    print(
        "| sw_batch_size | slices/s | peak RSS (MB) | RSS before inference (MB) |" + (" peak GPU (MB) |" if gpu else "")
    )
    print("|---|---|---|---|" + ("---|" if gpu else ""))
    for b, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        row = f"| {b} | {med['slices_per_s']:.1f} | {med['peak_rss_mb']:.0f} | {med['rss_before_mb']:.0f} |"
        print(row + (f" {med['peak_gpu_mb']:.0f} |" if gpu else ""))
    base = statistics.median(r["slices_per_s"] for r in runs[args.batch_sizes[0]])
    for b in args.batch_sizes[1:]:
        speed = statistics.median(r["slices_per_s"] for r in runs[b]) / base
        print(f"throughput ratio sw_batch_size {b} / {args.batch_sizes[0]}: {speed:.2f}")


if __name__ == "__main__":
    main()
