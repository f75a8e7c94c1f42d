"""The GPU path, measured: training images/s and peak memory (fp32, AMP, activation checkpointing), inference
slices/s over batch sizes with the SAM-SP K=1 / single-pass cost ratio at batch 1 and at the batch that
saturates the device, and the bundle's own data pipeline (slices/s) beside the model.

Runs unchanged on CPU and on one GPU; prints markdown tables headed by the hardware they were measured on.
AMP is what the bundle's `amp` key gives (bf16 where the GPU supports it, else fp16 with a gradient scaler,
off on CPU). Training uses MONAI's SupervisedTrainer on batches already on the device, so its figures are the
model's; the data-pipeline table is the loader alone. Peak memory: CUDA's peak allocation, or on CPU the
process's resident-set growth sampled every few milliseconds.

    python scripts/benchmark_gpu.py                      # CUDA: vit_b 1024, batches 1 2 4 8; CPU: vit_b 256, 1 2
    python scripts/benchmark_gpu.py --variant vit_h --size 1024 --batches 2 --checkpointing on --inference off
    python scripts/benchmark_gpu.py --quick              # vit_test at 64 in seconds (the CI smoke test)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch
from benchmark_core import inference_ratio
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

from samsp_monai import SAMSP, SAMSPLoss
from samsp_monai.training.precision import DropScalerForBF16, amp_dtype, amp_enabled, amp_kwargs

REPO = Path(__file__).resolve().parents[1]
OOM = float("nan")  # a setting that ran out of device memory is reported as nan


def hardware(device: torch.device) -> str:
    """The device in words: GPU name and memory, or the CPU model and the threads torch uses."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if "model name" in ln), model
        )
    return f"CPU {model}, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores"


class PeakMemory:
    """Peak memory (MiB) of the code inside `with`: CUDA's peak allocation, or the peak RSS growth on CPU.

    On CPU, glibc is told to serve every allocation over 64 KiB by mmap and freed memory is trimmed first, so
    the resident set follows the live tensors instead of keeping an earlier setting's freed heap.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib = device, 0.0
        self._stop = threading.Event()
        if device.type == "cpu":
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD, fixed (no dynamic raise)
            gc.collect()
            libc.malloc_trim(0)

    @staticmethod
    def _rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, start: int) -> None:
        while not self._stop.wait(0.005):
            self.mib = max(self.mib, (self._rss() - start) / 2**20)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, args=(self._rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def train_throughput(
    variant: str, size: int, batch: int, amp: bool, checkpointing: bool, device: torch.device, steps: int
) -> tuple[float, float]:
    """(images/s, peak MiB) of SAM-SP training steps through MONAI's trainer, as train.json configures it."""
    net = SAMSP(variant, img_size=size, num_classes=2, in_channels=1, encoder_checkpointing=checkpointing)
    net = net.to(device)
    data = [
        {
            "image": torch.rand(batch, 1, size, size, device=device),
            "label": torch.randint(0, 3, (batch, 1, size, size), device=device),
        }
    ] * (steps + 1)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4),
        loss_function=SAMSPLoss(),
        amp=amp_enabled(amp, device),
        amp_kwargs=amp_kwargs(device),
        train_handlers=[DropScalerForBF16()],
    )
    stamps: list[float] = []

    def stamp(_: object) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    try:
        with PeakMemory(device) as memory:
            trainer.run()
    except torch.OutOfMemoryError:
        return OOM, OOM
    finally:
        del trainer, net, data
    return steps * batch / (stamps[-1] - stamps[0]), memory.mib  # the first step warms up


def inference_sweep(
    variant: str, size: int, batches: list[int], device: torch.device, dtype: torch.dtype | None, repeats: int
) -> dict[int, dict[str, float]]:
    """benchmark_core's paired SAM-SP / single-pass timing at each batch, stopping at the first out-of-memory."""
    results = {}
    for batch in batches:
        try:
            results[batch] = inference_ratio(variant, size, 1, repeats, str(device), batch=batch, dtype=dtype)
        except torch.OutOfMemoryError:
            break
    return results


def saturating_batch(results: dict[int, dict[str, float]]) -> int:
    """The smallest batch within 10% of the best SAM-SP slices/s: larger batches buy nothing more."""
    rate = {b: b / r["samsp_s"] for b, r in results.items()}
    return min(b for b in rate if rate[b] >= 0.9 * max(rate.values()))


def data_throughput(
    size: int, batch: int, workers: int, device: torch.device, root: Path, epochs: int
) -> tuple[float, float, float]:
    """(cache build s, slices/s, slices per batch) of the bundle's training loader on the generated demo volumes.

    The epochs are timed whole, worker start-up included, as training meets them (workers are not persistent).
    """
    parser = ConfigParser()
    parser.read_config([REPO / "bundle/configs/train.json", REPO / "bundle/configs/demo.json"])
    overrides = {"bundle_root": str(root), "image_size": size, "batch_size": batch, "num_workers": workers}
    parser.update(overrides | {"device": f"$torch.device('{device}')"})
    start = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    cache_s = time.perf_counter() - start
    slices, start = 0, time.perf_counter()
    for _ in range(epochs):
        for item in loader:
            image = item["image"].to(device, non_blocking=True)
            slices += image.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return cache_s, slices / (time.perf_counter() - start), slices / (epochs * len(loader))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--size", type=int, help="input size (default 1024 on CUDA, 256 on CPU)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 2 4 8 on CUDA, 1 2 on CPU)")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--amp", choices=["off", "on", "both"], default="both", help="'on' is a no-op on CPU")
    parser.add_argument("--inference", choices=["off", "on"], default="on")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps after one warm-up step")
    parser.add_argument("--repeats", type=int, default=5, help="inference pairs per batch")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader workers")
    parser.add_argument("--data_root", default=str(Path(tempfile.gettempdir()) / "samsp-benchmark"))
    parser.add_argument("--quick", action="store_true", help="vit_test at 64, 2 steps: a smoke test in seconds")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.quick:
        args.variant, args.size, args.batches, args.steps, args.repeats, args.workers = "vit_test", 64, [1, 2], 2, 2, 0
    size = args.size or (1024 if cuda else 256)
    batches = args.batches or ([1, 2, 4, 8] if cuda else [1, 2])
    amp_modes = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    amp_modes = [a for a in amp_modes if amp_enabled(a, device) == a] or [False]  # AMP is off on CPU
    ckpt_modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    reduced = str(amp_dtype(device)).removeprefix("torch.") if cuda else "fp32"

    print(f"Hardware: {hardware(device)}; torch {torch.__version__}; {args.variant} at {size} px\n")
    print(f"Training (MONAI SupervisedTrainer, SAM-SP K=1, LoRA, 2 classes, {args.steps} steps after a warm-up):\n")
    print("| variant | input | batch | precision | checkpointing | train images/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|")
    train_throughput(args.variant, size, batches[0], False, False, device, 1)  # one-time start-up, not reported
    fastest = 0.0
    for batch in batches:
        for amp in amp_modes:
            for ckpt in ckpt_modes:
                rate, mib = train_throughput(args.variant, size, batch, amp, ckpt, device, args.steps)
                fastest = max(fastest, rate)
                precision = reduced if amp else "fp32"
                on = "on" if ckpt else "off"
                print(
                    f"| {args.variant} | {size} | {batch} | {precision} | {on} | {rate:.2f} | {mib:.0f} |", flush=True
                )

    if args.inference == "on":
        dtype = amp_dtype(device) if cuda and True in amp_modes else None
        results = inference_sweep(args.variant, size, batches, device, dtype, args.repeats)
        print(f"\nInference ({'fp32' if dtype is None else reduced}, 1 class, median of {args.repeats} pairs):\n")
        print("| variant | input | batch | SAM-SP slices/s | single-pass slices/s | paired ratio | parts ratio |")
        print("|---|---|---|---|---|---|---|")
        for batch, r in results.items():
            samsp, single = batch / r["samsp_s"], batch / r["single_s"]
            ratios = f"{r['ratio']:.3f} | {r['parts']:.3f}"
            print(f"| {args.variant} | {size} | {batch} | {samsp:.2f} | {single:.2f} | {ratios} |", flush=True)
        if results:
            first, saturating = min(results), saturating_batch(results)
            print(
                f"\nSAM-SP K=1 / single pass: {results[first]['ratio']:.3f} at batch {first}, "
                f"{results[saturating]['ratio']:.3f} at the saturating batch {saturating}"
            )

    print(f"\nData pipeline (train.json + demo.json loader, {args.workers} workers, pin_memory {cuda}):\n")
    print("| input | volumes/batch | slices/batch | cache build (s) | loader slices/s |")
    print("|---|---|---|---|---|")
    volumes = 2
    epochs = 1 if args.quick else 2
    cache_s, rate, per_batch = data_throughput(size, volumes, args.workers, device, Path(args.data_root), epochs)
    print(f"| {size} | {volumes} | {per_batch:.0f} | {cache_s:.2f} | {rate:.1f} |")
    print(f"\nThe loader delivers {rate / fastest:.1f}x the images/s of the fastest training setting above.")
    print(f"\nDone on {hardware(device)}: results are the tables above; only {args.data_root} was written.")


if __name__ == "__main__":
    main()
