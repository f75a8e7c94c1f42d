"""The image encoder at inference: eager PyTorch, or an ONNX export of it run by OpenVINO or ONNX Runtime.

On a CPU the encoder is nearly all of the cost (LiteMedSAM: 75 GFLOPs per 256 px slice, about 1 s in eager fp32
PyTorch on 2 cores). Measured by `scripts/benchmark_cpu.py` on 2 cores (benchmarks/cpu/cpu_benchmark.md), the same
weights exported to ONNX run the encoder 2.3 to 3.9x faster in ONNX Runtime and 3.5 to 5.9x in OpenVINO with
eager's Dice to the hundredth of a point, and OpenVINO in bf16 (CPUs with AVX-512 BF16 or AMX; others run f32)
6.4 to 9.5x, 0.11 (Kvasir) and 0.23 (hippocampus) Dice points from eager. Kept only what gained at equal Dice:
ONNX Runtime's dynamic int8 quantisation was slower than fp32 and lost 24 to 67 Dice points, and eager bf16
autocast was slower than OpenVINO fp32 and moved Dice by 0.3 points, so neither is offered.

The export is built from the network's own encoder on first use (LoRA folded in), written to `export_dir` (the
trained model's folder; without one, a cache folder shared by all runs) as `encoder-<sha256[:16]>.onnx`, named
and tagged by the SHA-256 of the exported weights: a retrained model gets a new file (in a model's folder the old
ones are deleted) and never reads a stale one, and a file whose tag does not match the weights (a copy from another
model) is refused. Each export is checked against eager PyTorch on the first input before it is used. The export
holds batch 1 (TinyViT's reshapes fix the batch when traced), so a batch of slices runs slice by slice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write
from ..errors import SAMSPError
from ..paths import user_cache_dir
from .embedding_cache import WeightsDigest, state_digest

logger = logging.getLogger(__name__)

Runtime = Literal["torch", "openvino", "onnxruntime"]
Precision = Literal["fp32", "bf16"]
SUPPORTED = {"torch": ("fp32",), "openvino": ("fp32", "bf16"), "onnxruntime": ("fp32",)}
RUNTIMES = tuple(SUPPORTED)
EXPORT_FORMAT = "samsp-encoder-onnx-1"
DIGEST_KEY = "samsp_encoder_sha256"
EXPORT_TOLERANCE = 1e-3  # max |export - eager| on the first input, relative to the largest |eager| value

EncodeFn = Callable[[Tensor], Tensor]


def export_path(export_dir: str | Path, digest: str) -> Path:
    return Path(export_dir) / f"encoder-{digest[:16]}.onnx"


def export_encoder(encoder: nn.Module, example: Tensor, digest: str, path: Path, prune: bool) -> Path:
    """ONNX export of `encoder` (eval, batch 1 of `example`'s shape) tagged with its weights' SHA-256, written
    atomically. With `prune` (a model's own folder) older exports there are deleted: each is 40 MB for
    LiteMedSAM, 360 MB for vit_b, and a retrained model never reads them again."""
    for name in ("onnx_ir", "onnxscript"):  # one INFO line per deduplicated initializer otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        program = torch.onnx.export(
            encoder.eval(),
            (example[:1].cpu(),),
            input_names=["image"],
            output_names=["embedding"],
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props.update({"format": EXPORT_FORMAT, DIGEST_KEY: digest})
    try:
        atomic_write(path, lambda f: f.write(program.model_proto.SerializeToString()))
    except OSError as e:
        raise SAMSPError(
            f"cannot write the encoder export {path} ({e.strerror or e}): make its folder writable, or run with "
            "--runtime torch"
        ) from e
    for old in path.parent.glob("encoder-*.onnx") if prune else ():
        if old != path:
            old.unlink(missing_ok=True)
            logger.info("deleted %s: exported from other weights", old)
    logger.info("exported the image encoder to %s", path)
    return path


def check_export(path: Path, digest: str) -> None:
    """Refuse an export that is not this project's or was made from other weights than `digest`."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # a truncated or foreign file raises many different errors
        raise SAMSPError(f"{path}: not a readable ONNX file ({e}); delete it and it is rebuilt on first use") from e
    if props.get("format") != EXPORT_FORMAT:
        raise SAMSPError(f"{path}: not an encoder exported by samsp_monai (no format {EXPORT_FORMAT!r}); delete it")
    if props.get(DIGEST_KEY) != digest:
        raise SAMSPError(
            f"{path}: exported from other weights (encoder sha256 {props.get(DIGEST_KEY, '?')[:16]}...) than this "
            f"model's ({digest[:16]}...), e.g. copied from another model's folder; delete it and it is rebuilt "
            "from this model on first use"
        )


def compile_openvino(path: Path, config: dict[str, Any]) -> Any:
    """The export compiled for OpenVINO's CPU plugin, in a thread of its own that ends with the call.

    The plugin (2026.4) gives the thread that compiles a model an alternate signal stack and frees that stack when
    the model is released, resetting it only if the releasing thread is the one that compiled. Python's garbage
    collector releases objects in whatever thread runs it, so a model compiled in a thread that lives on (the main
    thread) could leave it a freed signal stack, and the next Python signal handler run there (SIGCHLD, SIGINT)
    killed the process with SIGSEGV. A thread that ends right after compiling holds nothing afterwards."""
    import openvino

    with ThreadPoolExecutor(1) as compiler:
        return compiler.submit(lambda: openvino.Core().compile_model(str(path), "CPU", config)).result()


def open_export(path: Path, runtime: Runtime, precision: Precision) -> EncodeFn:
    """A function running the export in `runtime` with as many threads as torch uses (`OMP_NUM_THREADS`)."""
    threads = torch.get_num_threads()
    if runtime == "openvino":
        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        compiled = compile_openvino(path, {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
        return lambda x: torch.from_numpy(np.array(compiled(x.numpy())[0]))
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


class EncoderRuntime:
    """`runtime(encoder, x, plain)`: the embeddings of preprocessed inputs `x` (B, 3, S, S), computed by `encoder`
    in eager PyTorch (`runtime="torch"`) or by an export of
    `plain()` (the encoder without adapters) run by OpenVINO or ONNX Runtime. The export is rebuilt or reloaded
    only when `encoder`'s weights change; `weights_digest` may be shared with an embedding cache of the same
    encoder, so its weights are hashed once."""

    def __init__(
        self,
        runtime: Runtime = "torch",
        precision: Precision = "fp32",
        export_dir: str | Path | None = None,
        weights_digest: WeightsDigest | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise SAMSPError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if precision not in SUPPORTED[runtime]:
            raise SAMSPError(
                f"runtime {runtime!r} runs runtime_precision {' or '.join(SUPPORTED[runtime])}, not {precision!r} "
                "(bf16: openvino)"
            )
        self.runtime, self.precision, self.prune = runtime, precision, export_dir is not None
        self.export_dir = Path(export_dir) if export_dir is not None else user_cache_dir("encoders")
        self.weights_digest = weights_digest or WeightsDigest()
        self._open: tuple[str, EncodeFn] | None = None

    @property
    def salt(self) -> str:
        """What sets this runtime's embeddings apart in an embedding cache: bf16 computes otherwise; fp32 exports
        equal eager within 3e-6, far below the cache's float16 rounding, so they share its entries."""
        return "" if self.precision == "fp32" else f":{self.precision}"

    def __call__(self, encoder: nn.Module, x: Tensor, plain: Callable[[], nn.Module]) -> Tensor:
        if self.runtime == "torch":
            return encoder(x)
        run = self.opened(encoder, x, plain)
        return torch.cat([run(image[None].cpu().contiguous()) for image in x]).to(x.device)

    def opened(self, encoder: nn.Module, example: Tensor, plain: Callable[[], nn.Module]) -> EncodeFn:
        live = self.weights_digest(encoder)
        if self._open is None or self._open[0] != live:
            module = plain()
            digest = live if module is encoder else state_digest(module.state_dict())
            path = export_path(self.export_dir, digest)
            fresh = not path.exists()
            if fresh:
                export_encoder(module, example, digest, path, self.prune)
            check_export(path, digest)
            run = open_export(path, self.runtime, self.precision)
            if fresh:  # checked in fp32, which must equal eager; an fp32 runtime is checked as it will run
                checked = run if self.precision == "fp32" else open_export(path, self.runtime, "fp32")
                self.check_against_eager(module, example[:1], checked, path)
            self._open = (live, run)
        return self._open[1]

    def check_against_eager(self, module: nn.Module, example: Tensor, run: EncodeFn, path: Path) -> None:
        """A new export must give eager's embedding; one that does not is deleted, never used."""
        with torch.no_grad():
            eager = module(example).cpu()
        error = float((run(example.cpu().contiguous()) - eager).abs().max())
        if not error <= EXPORT_TOLERANCE * max(1.0, float(eager.abs().max())):
            path.unlink(missing_ok=True)
            raise SAMSPError(
                f"the {self.runtime} export of the image encoder differs from PyTorch by {error:.3g} on the first "
                "input; use runtime 'torch' (and report this with your torch and runtime versions)"
            )
