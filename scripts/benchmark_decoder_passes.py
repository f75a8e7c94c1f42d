"""Decoder passes per prompt row: eager PyTorch against their ONNX exports, on a trained model's decoder.

Times the prompt-free pass and the box-prompted pass at 1, 8 and 16 prompt rows (a 2D image; a batch of slices
with one and two classes) in each runtime, in one process with `--threads` threads, and reports each export's
largest difference from eager's logits and the share of pixels whose sign agrees. The embeddings are random (the
decoder's cost does not depend on their values); the exports are built in a temporary folder.

    python scripts/benchmark_decoder_passes.py RUN/models/model.pt --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samsp_monai.model.decoder_runtime import BoxPass, DecoderRuntime, PromptFreePass  # noqa: E402
from samsp_monai.model.network import SAMSP  # noqa: E402
from samsp_monai.model_file import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a trained model.pt with its model.json")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    net = SAMSP(**model.network_args)
    net.load_state_dict(model.state_dict)
    net.eval()
    size = net.sam.prompt_encoder.image_embedding_size
    embeddings = torch.randn(16, net.sam.prompt_encoder.embed_dim, *size) * 0.3
    boxes = torch.tensor([[0.25, 0.25, 0.6, 0.65]]).repeat(16, 1) * net.img_size
    with tempfile.TemporaryDirectory() as folder:
        runtimes = {name: DecoderRuntime(name, Path(folder) / name) for name in ("torch", "onnxruntime", "openvino")}
        print(f"{args.model}: {args.threads} threads, ms per call (mean of {args.repeats})")
        with torch.no_grad():
            for name, runtime in runtimes.items():
                for rows in (1, 8, 16):
                    for decoder_pass, inputs in (
                        (PromptFreePass, (embeddings[:rows],)),
                        (BoxPass, (embeddings[:rows], boxes[:rows])),
                    ):
                        eager = decoder_pass(net.sam)(*inputs)
                        out = runtime(decoder_pass(net.sam), *inputs)  # builds the export on its first call
                        start = time.perf_counter()
                        for _ in range(args.repeats):
                            runtime(decoder_pass(net.sam), *inputs)
                        ms = (time.perf_counter() - start) / args.repeats * 1000
                        error = float((out - eager).abs().max())
                        agree = float(((out > 0) == (eager > 0)).float().mean())
                        print(
                            f"{name:12s} {decoder_pass.__name__:15s} rows {rows:2d}: {ms:6.0f} ms"
                            f" ({ms / rows:4.0f} ms per row), max |Δ logit| {error:.2g}, sign agrees {agree:.5f}",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
