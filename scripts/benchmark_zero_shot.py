"""Zero-shot LiteMedSAM on Kvasir-SEG's validation split: what the pretrained model gives with no training.

Two box prompts bracket the trained arms of `benchmark_quality.py --variant lite_medsam`:
- the floor, a box around the whole image (the naive way to run a box-prompted SAM without a user);
- the ceiling, the ground-truth box (no training, but NOT prompt-free: it needs the answer's extent).
Scored like the trained arms: one class, LiteMedSAM's preprocessing, logits brought back to the original image
(SAM's geometry), Dice and IoU per image in original size, averaged over images. The embeddings come from the
same cache as the trained arms (OUT/embedding_cache), so running this before or after them costs one encoder
pass per image in all.

    python scripts/benchmark_zero_shot.py --out benchmarks/out

Writes OUT/kvasir/zero_shot.json and prints one line per prompt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
sys.path.insert(0, str(REPO))

from samsp_monai import SAMSP  # noqa: E402
from samsp_monai.data.datalist import write_json_atomic  # noqa: E402
from samsp_monai.evaluation.metrics import case_metrics  # noqa: E402
from samsp_monai.model.geometry import content_shape  # noqa: E402
from samsp_monai.model.lite_medsam import LITE_MEDSAM_IMG_SIZE, lite_medsam_checkpoint  # noqa: E402


def bundle_loader() -> Compose:
    """The bundle's own 2D load chain (train.json + image2d.json), so images and masks are read, scaled and
    oriented exactly as the trained arms see them, and the embeddings are the ones their cache holds."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "image2d.json")])
    return Compose(parser.get_parsed_content("load_transforms"))


def read_case(load: Compose, root: Path, stem: str) -> tuple[torch.Tensor, np.ndarray]:
    data = load({"image": str(root / "images" / f"{stem}.jpg"), "label": str(root / "masks" / f"{stem}.jpg")})
    return torch.as_tensor(data["image"])[None].float(), np.asarray(data["label"][0]) > 0


def prompts(mask: np.ndarray) -> dict[str, list[float]]:
    """Boxes (x0, y0, x1, y1) in the model's input pixels: the whole image's content and the mask's extent."""
    h, w = content_shape(mask.shape, LITE_MEDSAM_IMG_SIZE, "sam")
    scale = h / mask.shape[0]
    ys, xs = np.nonzero(mask)
    return {
        "whole_image_box": [0.0, 0.0, w - 1.0, h - 1.0],
        "ground_truth_box": [
            xs.min() * scale,
            ys.min() * scale,
            (xs.max() + 1) * scale - 1,
            (ys.max() + 1) * scale - 1,
        ],
    }


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of one image, by the scorer every evaluation uses (`case_metrics`, class 1)."""
    (row,) = case_metrics(pred.astype(np.uint8), truth.astype(np.uint8), (1.0, 1.0), [1])
    return row["dice"], row["iou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--max-cases", type=int, help="first N validation images only (smoke runs)")
    args = parser.parse_args()
    root = args.data_root / "kvasir-seg"
    stems = (root / "val.txt").read_text().split()[: args.max_cases]
    net = SAMSP(
        "lite_medsam", LITE_MEDSAM_IMG_SIZE, 1, 3, lite_medsam_checkpoint(), "frozen", geometry="sam",
        embedding_cache=args.out / "embedding_cache",
    ).eval()  # fmt: skip
    load = bundle_loader()
    scores: dict[str, list[tuple[float, float]]] = {"whole_image_box": [], "ground_truth_box": []}
    start = time.monotonic()
    for n, stem in enumerate(stems, 1):
        x, mask = read_case(load, root, stem)
        with torch.no_grad():
            embedding = net.encode(net.preprocess(x))
            for name, box in prompts(mask).items():
                logits = net.class_logits(net.decode_boxes(embedding, torch.tensor([[box]])), mask.shape)
                scores[name].append(dice_iou(logits.argmax(1)[0].numpy() == 1, mask))
        print(f"case {n}/{len(stems)} {stem}: {time.monotonic() - start:.0f} s", flush=True)
    summary = {
        name: {"dice": float(np.mean([d for d, _ in s])), "iou": float(np.mean([i for _, i in s])), "cases": len(s)}
        for name, s in scores.items()
    }
    summary["seconds"] = time.monotonic() - start
    out = args.out / "kvasir" / "zero_shot.json"
    write_json_atomic(summary, out)
    for name in scores:
        print(f"zero-shot LiteMedSAM, {name}: Dice {summary[name]['dice']:.4f}, IoU {summary[name]['iou']:.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
