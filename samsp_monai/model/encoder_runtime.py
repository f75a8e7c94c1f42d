"""The image encoder at inference: eager PyTorch, or an ONNX export of it run by OpenVINO or ONNX Runtime.

On a CPU the encoder is nearly all of the cost (LiteMedSAM: 75 GFLOPs per 256 px slice, about 1 s in eager fp32
PyTorch on 2 cores). Measured by `scripts/benchmark_cpu.py` on 2 cores (benchmarks/cpu/cpu_benchmark.md), the same
weights exported to ONNX run the encoder 2.3 to 3.9x faster in ONNX Runtime and 3.5 to 5.9x in OpenVINO with
eager's Dice to the hundredth of a point, and OpenVINO in bf16 (CPUs with AVX-512 BF16 or AMX; others run f32)
6.4 to 9.5x, 0.11 (Kvasir) and 0.23 (hippocampus) Dice points from eager. Kept only what gained at equal Dice:
ONNX Runtime's dynamic int8 quantisation was slower than fp32 and lost 24 to 67 Dice points, and eager bf16
autocast was slower than OpenVINO fp32 and moved Dice by 0.3 points, so neither is offered.

The export (`onnx_export.py`) holds batch 1 (TinyViT's reshapes fix the batch when traced), so a batch of slices
runs slice by slice; it is `encoder-<key[:16]>.onnx` beside the trained model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from .embedding_cache import WeightsDigest
from .onnx_export import ExportedPart, Precision, Runtime

ENCODER = "encoder"


class EncoderRuntime:
    """`runtime(encoder, x, plain)`: the embeddings of preprocessed inputs `x` (B, 3, S, S), computed by `encoder`
    in eager PyTorch (`runtime="torch"`) or by an export of `plain()` (the encoder without adapters) run by
    OpenVINO or ONNX Runtime in `precision`, kept in `export_dir`."""

    def __init__(
        self,
        runtime: Runtime = "torch",
        precision: Precision = "fp32",
        export_dir: str | Path | None = None,
        weights_digest: WeightsDigest | None = None,
    ) -> None:
        self.runtime, self.precision = runtime, precision
        self.export = ExportedPart(ENCODER, ("image",), False, runtime, precision, export_dir, weights_digest)

    @property
    def salt(self) -> str:
        """What sets this runtime's embeddings apart in an embedding cache: bf16 computes otherwise; fp32 exports
        equal eager within 3e-6, far below the cache's float16 rounding, so they share its entries."""
        return "" if self.precision == "fp32" else f":{self.precision}"

    def __call__(self, encoder: nn.Module, x: Tensor, plain: Callable[[], nn.Module]) -> Tensor:
        if self.runtime == "torch":
            return encoder(x)
        run = self.export.opened(encoder, (x[:1],), plain)
        return torch.cat([run(image[None].cpu().contiguous()) for image in x]).to(x.device)
