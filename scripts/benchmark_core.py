"""Issue-2 numbers: SAM-SP inference cost over single-pass SAM, LoRA's trainable share, demo wall time.

Timings run the two settings in adjacent pairs in one process and report the median of the per-pair ratios;
the encoder and one decoder pass are also timed apart, and (encoder + 2 passes) / (encoder + 1 pass) is
the ratio free of the machine's noise. Compare ratios measured in one
run, not absolute seconds across runs.

    python scripts/benchmark_core.py                      # vit_b at 256 and 512 on CPU
    python scripts/benchmark_core.py --sizes 1024 --device cuda --demo=false
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from samsp_monai import SAMSP
from samsp_monai.model.lora import count_parameters

REPO = Path(__file__).resolve().parents[1]


def timed(step: Callable[[], object], x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def inference_ratio(
    variant: str, size: int, classes: int, repeats: int, device: str, batch: int = 1, dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Median forward time of SAM-SP (K=1) and of the single pass on the same weights and input, run in
    adjacent pairs, with the median of the per-pair ratios (adjacent runs share the machine's load); plus
    the median cost of the encoder and of one decoder pass, whose sum gives the ratio without that noise.
    `dtype` runs everything under autocast to that dtype (AMP)."""
    net = SAMSP(variant, img_size=size, num_classes=classes, in_channels=1).to(device).eval()
    x = torch.rand(batch, 1, size, size, device=device)
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
    times: dict[bool, list[float]] = {True: [], False: []}
    with autocast:
        for i in range(repeats + 1):
            for self_prompt in (True, False):
                net.self_prompt = self_prompt
                elapsed = timed(lambda: net(x), x)
                if i:  # the first round warms up caches and kernels
                    times[self_prompt].append(elapsed)
        embeddings = net.sam.image_encoder(net.preprocess(x))
        first = net.decode(embeddings)
        encoder = statistics.median(timed(lambda: net.sam.image_encoder(net.preprocess(x)), x) for _ in range(repeats))
        decoder = statistics.median(timed(lambda: net.decode(embeddings, first), x) for _ in range(repeats))
    pairs = statistics.median(a / b for a, b in zip(times[True], times[False], strict=True))
    samsp, single = statistics.median(times[True]), statistics.median(times[False])
    parts = (encoder + 2 * decoder) / (encoder + decoder)
    return {
        "samsp_s": samsp,
        "single_s": single,
        "ratio": pairs,
        "encoder_s": encoder,
        "pass_s": decoder,
        "parts": parts,
    }


def demo_wall_time() -> float:
    """Seconds of the README's main command on a fresh bundle root (data generation included)."""
    root = REPO / "runs" / f"benchmark-demo-{int(time.time())}"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "['bundle/configs/train.json','bundle/configs/demo.json']",
        "--bundle_root",
        str(root),
    ]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    print("  " + next(line for line in result.stdout.splitlines() if line.startswith("best validation")))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--demo", type=lambda s: s.lower() != "false", default=True)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")

    print(f"\nInference, {args.variant}, batch 1, {args.classes} class(es), median of {args.repeats} adjacent pairs:")
    print("| input | SAM-SP K=1 (s) | single pass (s) | paired ratio | encoder (s) | decoder pass (s) | parts ratio |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = inference_ratio(args.variant, size, args.classes, args.repeats, args.device)
        print(
            f"| {size} | {r['samsp_s']:.4f} | {r['single_s']:.4f} | {r['ratio']:.3f} | {r['encoder_s']:.4f} "
            f"| {r['pass_s']:.4f} | {r['parts']:.3f} |"
        )

    net = SAMSP(args.variant, img_size=1024, num_classes=args.classes, lora_rank=4)
    trainable, total = count_parameters(net)
    lora = sum(p.numel() for n, p in net.named_parameters() if "lora_" in n)
    print(f"\nTrainable parameters, {args.variant}, LoRA rank 4 on qkv (1024 input, {args.classes} class):")
    share = f"{100 * trainable / total:.2f}%"
    print(f"  {trainable:,} of {total:,} ({share}); LoRA alone {lora:,} ({100 * lora / total:.3f}%)")

    if args.demo:
        print("\nDemo main job (README command), fresh bundle root:")
        print(f"  wall time {demo_wall_time():.1f} s")


if __name__ == "__main__":
    main()
