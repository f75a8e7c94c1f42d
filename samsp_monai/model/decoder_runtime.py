"""The decoder passes (prompt-free pass 1, box-prompted self-prompt passes) and what runs them at inference.

Once the encoder runs exported, the decoder passes in PyTorch are most of what is left on a CPU: about 4 s of a
self-prompted hippocampus volume on 2 cores, and all of a repeated request whose embeddings are cached. Exported,
they run at about 28 ms per prompt row in OpenVINO and 25 ms in ONNX Runtime against 60 ms in PyTorch (2 threads,
logits within 6e-5 of eager's), which took a self-prompted volume from 16.0 to 12.9 s (benchmarks/cpu). Each pass is
exported on first use with a dynamic number of prompt rows, as `prompt_free_pass-<key[:16]>.onnx` and
`box_pass-<key[:16]>.onnx` beside the trained model (`onnx_export.py`), always in fp32: the decoder's logits are
the output, and its cost is small beside the encoder's. Only a trained model's folder holds them: while training,
the decoder changes each step and stays eager.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from .embedding_cache import WeightsDigest
from .onnx_export import ExportedPart, Runtime, check_runtime


class DecoderPass(nn.Module):
    """A view of a SAM's prompt encoder and mask decoder as one module with tensor inputs, which is what an export
    holds. Built per call, never registered: the weights stay under the SAM's own state-dict keys."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder, self.mask_decoder = sam.prompt_encoder, sam.mask_decoder

    def class_logits(self, embeddings: Tensor, boxes: Tensor | None) -> Tensor:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder.class_logits(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)


class PromptFreePass(DecoderPass):
    """Pass 1: the low-resolution class logits (B, N, h, w) of image embeddings (B, C, h', w') with SAM's learned
    no-prompt embeddings, one prompt row shared by all images."""

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.class_logits(embeddings, None)


class BoxPass(DecoderPass):
    """A self-prompted pass: the class logits (R, N, h, w) of R rows, row r being image embedding r prompted by box
    r (R, 4), in the encoder's input pixels (x0, y0, x1, y1)."""

    def forward(self, embeddings: Tensor, boxes: Tensor) -> Tensor:
        return self.class_logits(embeddings, boxes)


class DecoderRuntime:
    """`runtime(decoder_pass, *inputs)`: the pass in eager PyTorch, or, with an exported `runtime` and a trained
    model's folder `export_dir`, its export run there in fp32. Both passes hold the same weights, hashed once."""

    def __init__(self, runtime: Runtime = "torch", export_dir: str | Path | None = None) -> None:
        check_runtime(runtime, "fp32")
        self.exports: dict[type[DecoderPass], ExportedPart] = {}
        if runtime != "torch" and export_dir is not None:
            digest = WeightsDigest()
            self.exports = {
                PromptFreePass: ExportedPart(
                    "prompt_free_pass", ("embeddings",), True, runtime, "fp32", export_dir, digest
                ),
                BoxPass: ExportedPart("box_pass", ("embeddings", "boxes"), True, runtime, "fp32", export_dir, digest),
            }

    def __call__(self, decoder_pass: DecoderPass, *inputs: Tensor) -> Tensor:
        export = self.exports.get(type(decoder_pass))
        return decoder_pass(*inputs) if export is None else export(decoder_pass, *inputs)
