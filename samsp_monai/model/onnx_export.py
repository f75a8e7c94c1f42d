"""A part of the network (the image encoder, a decoder pass) as an ONNX export run by OpenVINO or ONNX Runtime.

The export is built from the part's own module on first use, written to `export_dir` (the trained model's folder;
without one, a cache folder shared by all runs) as `<part>-<key[:16]>.onnx`, named and tagged by a SHA-256 key of
the exported weights and the input sizes the graph holds (SAM's prompt encoder has the same weights at every image
size, but its export holds one embedding size): a retrained model gets a new file (in a model's folder the old ones
of that part are deleted) and never reads a stale one, and a file whose tag does not match (a copy from another
model) is refused. Each new export is checked against eager PyTorch on the first input before it is used.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
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
EXPORT_TOLERANCE = 1e-3  # max |export - eager| on the first input, relative to the largest |eager| value

RunFn = Callable[..., Tensor]


def check_runtime(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise SAMSPError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if precision not in SUPPORTED[runtime]:
        raise SAMSPError(
            f"runtime {runtime!r} runs runtime_precision {' or '.join(SUPPORTED[runtime])}, not {precision!r} "
            "(bf16: openvino)"
        )


def export_format(part: str) -> str:
    return f"samsp-{part}-onnx-1"


def digest_key(part: str) -> str:
    return f"samsp_{part}_sha256"


def export_key(weights_digest: str, example: Sequence[Tensor], rows: bool) -> str:
    """SHA-256 of the weights' digest and the input shapes and dtypes, the dynamic row dimension left out."""
    shapes = [(("rows",) if rows else tuple(t.shape[:1])) + tuple(t.shape[1:]) for t in example]
    signature = f"{weights_digest}:{shapes}:{[str(t.dtype) for t in example]}"
    return hashlib.sha256(signature.encode()).hexdigest()


def export_path(export_dir: str | Path, part: str, key: str) -> Path:
    return Path(export_dir) / f"{part}-{key[:16]}.onnx"


def export_module(
    module: nn.Module, example: Sequence[Tensor], names: Sequence[str], rows: bool, key: str, path: Path, part: str
) -> None:
    """ONNX export of `module` (eval) on `example`, tagged with its key (`export_key`), written atomically. With `rows`
    the first dimension of every input is dynamic (a decoder pass meets any number of prompt rows); the encoder's
    stays fixed (TinyViT's reshapes fix the batch when traced)."""
    for name in ("onnx_ir", "onnxscript"):  # one INFO line per deduplicated initializer otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    dim = torch.export.Dim("rows", min=1)
    dynamic = tuple({0: dim} for _ in names) if rows else None
    with torch.no_grad(), warnings.catch_warnings():
        # the inputs share their row axis on purpose; torch.onnx warns that it keeps one name for it
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis")
        program = torch.onnx.export(
            module.eval(),
            tuple(t.cpu() for t in example),
            input_names=list(names),
            output_names=["output"],
            dynamic_shapes=dynamic,
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props.update({"format": export_format(part), digest_key(part): key})
    try:
        atomic_write(path, lambda f: f.write(program.model_proto.SerializeToString()))
    except OSError as e:
        raise SAMSPError(
            f"cannot write the {part} export {path} ({e.strerror or e}): make its folder writable, or run with "
            "--runtime torch"
        ) from e
    logger.info("exported the %s to %s", part, path)


def prune_exports(path: Path, part: str) -> None:
    """Delete the folder's other exports of `part`: each is 40 MB for LiteMedSAM's encoder (360 MB for vit_b),
    and a retrained model never reads them again."""
    for old in path.parent.glob(f"{part}-*.onnx"):
        if old != path:
            old.unlink(missing_ok=True)
            logger.info("deleted %s: exported from other weights", old)


def check_export(path: Path, part: str, key: str) -> None:
    """Refuse an export that is not this project's export of `part` or was made from other weights or input sizes
    than `key` (`export_key`) says."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # a truncated or foreign file raises many different errors
        raise SAMSPError(f"{path}: not a readable ONNX file ({e}); delete it and it is rebuilt on first use") from e
    if props.get("format") != export_format(part):
        raise SAMSPError(f"{path}: not a {part} exported by samsp_monai (no format {export_format(part)!r}); delete it")
    tag = props.get(digest_key(part), "?")
    if tag != key:
        raise SAMSPError(
            f"{path}: exported from other weights or input sizes ({part} key {tag[:16]}...) than this model's "
            f"({key[:16]}...), e.g. copied from another model's folder; delete it and it is rebuilt from this model "
            "on first use"
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


def open_export(path: Path, runtime: Runtime, precision: Precision, names: Sequence[str]) -> RunFn:
    """A function running the export in `runtime` with as many threads as torch uses (`OMP_NUM_THREADS`)."""
    threads = torch.get_num_threads()
    if runtime == "openvino":
        hint = {"fp32": "f32", "bf16": "bf16"}[precision]  # explicit: OpenVINO's own default is bf16 on such CPUs
        compiled = compile_openvino(path, {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
        return lambda *x: torch.from_numpy(np.array(compiled([t.numpy() for t in x])[0]))
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda *x: torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, x, strict=True)})[0])


class ExportedPart:
    """`part(module, *inputs)`: `module(*inputs)` computed by its ONNX export in `runtime`, rebuilt or reloaded only
    when the module's weights or input sizes change. `plain()` gives the module to export (the encoder with LoRA
    folded in); its inputs are named `names`, and with `rows` their first dimension is dynamic. `weights_digest` may
    be shared with an embedding cache of the same module, so its weights are hashed once."""

    def __init__(
        self,
        part: str,
        names: Sequence[str],
        rows: bool,
        runtime: Runtime,
        precision: Precision,
        export_dir: str | Path | None,
        weights_digest: WeightsDigest | None = None,
    ) -> None:
        check_runtime(runtime, precision)
        self.part, self.names, self.rows = part, tuple(names), rows
        self.runtime, self.precision, self.prune = runtime, precision, export_dir is not None
        self.export_dir = Path(export_dir) if export_dir is not None else user_cache_dir("exports")
        self.weights_digest = weights_digest or WeightsDigest()
        self._open: tuple[str, RunFn] | None = None

    def __call__(self, module: nn.Module, *inputs: Tensor, plain: Callable[[], nn.Module] | None = None) -> Tensor:
        run = self.opened(module, inputs, plain or (lambda: module))
        return run(*(t.cpu().contiguous() for t in inputs)).to(inputs[0].device)

    def opened(self, module: nn.Module, example: Sequence[Tensor], plain: Callable[[], nn.Module]) -> RunFn:
        live = export_key(self.weights_digest(module), example, self.rows)
        if self._open is None or self._open[0] != live:
            exported = plain()
            key = live if exported is module else export_key(state_digest(exported.state_dict()), example, self.rows)
            path = export_path(self.export_dir, self.part, key)
            fresh = not path.exists()
            if fresh:
                # a dynamic first dimension is traced from two rows (torch.export specialises a size of 1)
                traced = [t.expand(2, *t.shape[1:]) if self.rows and len(t) == 1 else t for t in example]
                export_module(exported, traced, self.names, self.rows, key, path, self.part)
                if self.prune:
                    prune_exports(path, self.part)
            check_export(path, self.part, key)
            run = open_export(path, self.runtime, self.precision, self.names)
            if fresh:  # checked in fp32, which must equal eager; an fp32 runtime is checked as it will run
                checked = run if self.precision == "fp32" else open_export(path, self.runtime, "fp32", self.names)
                self.check_against_eager(exported, example, checked, path)
            self._open = (live, run)
        return self._open[1]

    def check_against_eager(self, module: nn.Module, example: Sequence[Tensor], run: RunFn, path: Path) -> None:
        """A new export must give eager's output; one that does not is deleted, never used."""
        with torch.no_grad():
            eager = module(*example).cpu()
        error = float((run(*(t.cpu().contiguous() for t in example)) - eager).abs().max())
        if not error <= EXPORT_TOLERANCE * max(1.0, float(eager.abs().max())):
            path.unlink(missing_ok=True)
            raise SAMSPError(
                f"the {self.runtime} export of the {self.part} differs from PyTorch by {error:.3g} on the first "
                "input; use runtime 'torch' (and report this with your torch and runtime versions)"
            )
