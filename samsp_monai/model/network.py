"""SAM-SP: SAM that prompts itself with a box from its own prompt-free prediction."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SAMSPError
from .boxes import jitter_boxes, masks_to_boxes
from .decoder_runtime import BoxPass, DecoderPass, DecoderRuntime, PromptFreePass
from .embedding_cache import EmbeddingCache, WeightsDigest
from .encoder_runtime import EncoderRuntime
from .geometry import GEOMETRIES, Geometry, content_shape, from_model_frame, to_model_frame
from .lite_medsam import LITE_MEDSAM
from .lora import EncoderTraining, LoraLayout, adapt_encoder, has_lora, log_trainable, merged_state_dict
from .onnx_export import Precision, Runtime
from .sam_factory import build_sam, load_sam_checkpoint

EmptyBox = Literal["keep_previous", "full_image"]
EMPTY_BOX_RULES = ("keep_previous", "full_image")
TrainOutput = Literal["pair", "final"]
# SAM's box-prompt noise is capped at 20 px for its 1024 px input; scaled to the encoder size here.
SAM_JITTER_MAX_PX = 20 / 1024
# how this process computes and keeps embeddings, not what the network is: left out of `network_args`
SERVING_ARGS = ("embedding_cache", "runtime", "runtime_precision", "model_dir")


class SAMSPOutput(NamedTuple):
    """Training output: the self-prompted logits (teacher, supervised) and the prompt-free ones (student)."""

    final: Tensor
    first: Tensor


class SAMSP(nn.Module):
    """Prompt-free segmentation with SAM: pass 1 without prompt, then K passes prompted by the previous box.

    Input: (B, 1 or 3, H, W) intensities scaled to [0, 1]; they are brought to `img_size` x `img_size` as
    `geometry` says (`stretch`, or SAM's longest-side resize and padding, see `geometry.py`), grey images are
    replicated to RGB, and the result is normalised as the pretrained encoder was trained: SAM's own pixel
    statistics, or for `lite_medsam` LiteMedSAM's per-image min-max to [0, 1] (padding stays 0).
    Output: (B, num_classes + 1, H, W) class logits whose
    background logit is fixed at 0, so softmax gives per-pixel class probabilities (for one class it equals
    a sigmoid) and argmax gives the label map. In training with self-prompting it returns
    `SAMSPOutput(final, first)`.

    The image embedding is computed once per forward and shared by every pass. `self_prompt=False` is the
    single-pass (SAMed-style) baseline; `iterations` is K at inference (training always uses one self-prompt).
    `empty_box` (inference) and `empty_box_train` (training) set what happens to a class whose previous
    mask is empty: `keep_previous` (inference default) keeps that prediction (a model that found nothing
    stays silent; in training that sample's pass 1 would be supervised directly, with a distillation term of
    0), `full_image` (training default, chosen by a measurement on the demo, see README) prompts with the whole
    image, so every sample reaches the box-prompted pass as in the paper.
    In training, `empty_prompts` holds the (B, N) flags of the y0 masks that were empty (logged per epoch
    by `prompt_stats.EmptyPromptShare`).
    `encoder_checkpointing` recomputes the encoder blocks' activations in backward (memory for vit_l/vit_h).
    `embedding_cache` (a folder) keeps the image embeddings of a frozen encoder (`embedding_cache.py`): with
    `encoder_training="frozen"` each distinct input is encoded once, across epochs, runs and processes; a folder
    is bypassed while any encoder weight is trainable (its entries would go stale each step). `"memory"` keeps them
    in a bounded store shared by the process (serving: a repeated request reuses them), used whenever no gradient
    reaches the encoder. `runtime` and `runtime_precision` choose what computes the embeddings when no gradient
    reaches the encoder (`encoder_runtime.py`: eager PyTorch, or an ONNX export run by OpenVINO or ONNX Runtime,
    kept in `model_dir`, the trained model's folder, whose change of weights also drops its in-memory
    embeddings); with a `model_dir`, `runtime` also runs the decoder passes (`decoder_runtime.py`, fp32). None of
    these four is a network setting (not in `network_args`).

    `dropout` drops whole channels of the image embedding in train mode only (Monte Carlo dropout: MONAI Label's
    epistemic scoring builds the network with it and runs it in train mode). `train_output="final"` returns the
    final logits alone in train mode too, for callers that run train mode to sample, not to learn.
    `network_args` records the construction arguments (without the base `checkpoint`, whose weights a trained
    state dict replaces), so a checkpoint can carry how to rebuild its network.
    Teaching the prompt path what a box means (training only, needs the label: `forward(x, target)`): with
    probability `gt_box_prob` per image and class, pass 2 is prompted with the ground-truth box of that class,
    jittered as SAM was trained (std `gt_box_jitter` x box side, capped at 20 px per 1024), instead of pass
    1's box; classes absent from the label keep pass 1's box. `gt_box_prob=0` is plain SAM-SP.
    `curriculum.GtBoxSchedule` changes `gt_box_prob` per epoch.
    """

    def __init__(
        self,
        variant: str = "vit_b",
        img_size: int = 1024,
        num_classes: int = 1,
        in_channels: int = 3,
        checkpoint: str | Path | None = None,
        encoder_training: EncoderTraining = "lora",
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] = ("qkv",),
        lora_dropout: float = 0.0,
        lora_layout: LoraLayout = "qkv",
        self_prompt: bool = True,
        iterations: int = 1,
        empty_box: EmptyBox = "keep_previous",
        empty_box_train: EmptyBox = "full_image",
        encoder_checkpointing: bool = False,
        geometry: Geometry = "stretch",
        dropout: float = 0.0,
        train_output: TrainOutput = "pair",
        gt_box_prob: float = 0.0,
        gt_box_jitter: float = 0.1,
        embedding_cache: str | Path | None = None,
        runtime: Runtime = "torch",
        runtime_precision: Precision = "fp32",
        model_dir: str | Path | None = None,
    ) -> None:
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__", "checkpoint", *SERVING_ARGS)}
        super().__init__()
        self.network_args = {
            k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in args.items()
        }
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (CT/MR) or 3 (RGB), got {in_channels}")
        for name, rule in (("empty_box", empty_box), ("empty_box_train", empty_box_train)):
            if rule not in EMPTY_BOX_RULES:
                raise ValueError(f"{name} must be 'keep_previous' or 'full_image', got {rule!r}")
        if not isinstance(encoder_checkpointing, bool):
            raise SAMSPError(
                f"config key 'encoder_checkpointing' must be True or False (a bool), got {encoder_checkpointing!r}"
            )
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if train_output not in ("pair", "final"):
            raise ValueError(f"train_output must be 'pair' or 'final', got {train_output!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.train_output = train_output
        self.embedding_dropout = nn.Dropout2d(dropout)
        self.img_size, self.num_classes, self.in_channels, self.geometry = img_size, num_classes, in_channels, geometry
        self.self_prompt, self.iterations, self.empty_box = self_prompt, iterations, empty_box
        self.empty_box_train = empty_box_train
        self.empty_prompts: Tensor | None = None
        if not 0.0 <= gt_box_prob <= 1.0 or gt_box_jitter < 0:
            raise SAMSPError(f"need 0 <= gt_box_prob <= 1 and gt_box_jitter >= 0, got {gt_box_prob}, {gt_box_jitter}")
        self.gt_box_prob, self.gt_box_jitter = gt_box_prob, gt_box_jitter
        self.minmax_input = variant == LITE_MEDSAM
        owner = str(model_dir) if model_dir is not None else None
        digest = WeightsDigest()  # one hash of the encoder's weights for the cache's keys and the export's name
        self.embedding_cache = (
            EmbeddingCache(embedding_cache, owner=owner, weights_digest=digest) if embedding_cache is not None else None
        )
        self.encoder_runtime = EncoderRuntime(runtime, runtime_precision, model_dir, digest)
        self.decoder_runtime = DecoderRuntime(runtime, model_dir)
        self.sam = build_sam(variant, img_size, num_classes)
        if checkpoint is not None:
            load_sam_checkpoint(self.sam, checkpoint, variant)
        self.sam.image_encoder.checkpointing = encoder_checkpointing
        self.encoder_training = encoder_training
        adapt_encoder(
            self.sam.image_encoder, encoder_training, lora_rank, lora_alpha, lora_targets, lora_dropout, lora_layout
        )
        log_trainable(self, f"SAM-SP {variant} (encoder: {encoder_training})")
        self.train(self.training)

    def train(self, mode: bool = True) -> SAMSP:
        """Train mode, but the batch norms of an encoder whose weights are frozen (`frozen`, `lora`) keep their
        pretrained running statistics: in train mode LiteMedSAM's TinyViT would normalise by batch statistics
        and overwrite its running ones, silently changing the pretrained encoder (SAM's ViT has none)."""
        super().train(mode)
        if self.encoder_training != "full":
            for module in self.sam.image_encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor | SAMSPOutput:
        size = x.shape[-2:]
        embeddings = self.embedding_dropout(self.encode(self.preprocess(x)))
        first = self.decode(embeddings)
        logits = first
        passes = (1 if self.training else self.iterations) if self.self_prompt else 0
        teach = target is not None and self.training and self.gt_box_prob > 0
        for i in range(passes):
            logits = self.decode(embeddings, logits, target if teach and i == 0 else None)
        final = self.class_logits(logits, size)
        if self.training and passes and self.train_output == "pair":
            return SAMSPOutput(final, self.class_logits(first, size))
        return final

    def preprocess(self, x: Tensor) -> Tensor:
        """[0, 1] intensities of any size -> the encoder's normalised RGB at img_size."""
        size = x.shape[-2:]
        x = to_model_frame(x, self.img_size, self.geometry)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.minmax_input:
            return minmax_content(x, content_shape(size, self.img_size, self.geometry))
        return (x * 255.0 - self.sam.pixel_mean) / self.sam.pixel_std

    def encode(self, x: Tensor) -> Tensor:
        """Image embeddings of preprocessed inputs: eager while a gradient reaches the encoder or the network is
        traced or exported (the graph must hold the encoder, not a runtime call or a cache lookup, which a trace
        would record as constants), else by the runtime, through the embedding cache where one is set (a folder
        only while the encoder is frozen)."""
        encoder = self.sam.image_encoder
        trained = any(p.requires_grad for p in encoder.parameters())
        if in_graph() or (trained and torch.is_grad_enabled()):
            return encoder(x)
        run = partial(self.encoder_runtime, encoder, plain=self.plain_encoder)
        if self.embedding_cache is None or (trained and not self.embedding_cache.bounded):
            return run(x)
        return self.embedding_cache(encoder, x, run, self.encoder_runtime.salt)

    def plain_encoder(self) -> nn.Module:
        """The image encoder without adapters, LoRA folded into its weights: what an exported runtime runs."""
        encoder = self.sam.image_encoder
        if not has_lora(encoder):
            return encoder
        plain = build_sam(self.network_args["variant"], self.img_size, self.num_classes).image_encoder
        prefix = "image_encoder."
        merged = merged_state_dict(self.sam)
        plain.load_state_dict({k.removeprefix(prefix): v for k, v in merged.items() if k.startswith(prefix)})
        return plain.to(next(encoder.parameters()).device).eval()

    def decode(self, embeddings: Tensor, previous: Tensor | None = None, target: Tensor | None = None) -> Tensor:
        """Low-resolution foreground logits (B, N, h, w): no prompt, or a box per class from `previous` (some
        replaced by the jittered ground-truth boxes of the label map `target`, see `gt_box_prob`)."""
        if previous is None:
            return self.run_pass(PromptFreePass(self.sam), embeddings)
        scale = self.img_size // previous.shape[-1]
        boxes, empty = masks_to_boxes(self.labels(previous), scale)
        if self.training:
            self.empty_prompts = empty.detach()
        if target is not None:
            boxes, empty = self.mix_in_gt_boxes(boxes, empty, target)
        keep_previous = (self.empty_box_train if self.training else self.empty_box) == "keep_previous"
        return self.decode_boxes(embeddings, boxes, previous if keep_previous else None, empty)

    def decode_boxes(
        self, embeddings: Tensor, boxes: Tensor, previous: Tensor | None = None, empty: Tensor | None = None
    ) -> Tensor:
        """Low-resolution logits (B, N, h, w) of class c prompted by box (b, c) of `boxes` (B, N, 4), given in the
        encoder's input pixels (x0, y0, x1, y1): one decoder call with a row per (image, class) pair, attending to
        its image, the mask of class c being token c of its row.

        Given `previous` logits, the pairs flagged `empty` keep them and are not decoded: a slice without a class
        would only have its decoded row thrown away, and once a volume's embeddings are cached, the decoder rows
        are what a repeated self-prompted inference costs (seconds per volume on a CPU). A traced or exported graph
        decodes every pair (its shapes may not depend on the data) and then keeps the empty pairs' `previous`."""
        b, n = boxes.shape[:2]
        every_pair = previous is None or in_graph()
        if every_pair:
            image = torch.arange(b, device=boxes.device).repeat_interleave(n)
            cls = torch.arange(n, device=boxes.device).repeat(b)
        else:
            image, cls = (~empty).nonzero(as_tuple=True)
            if not len(image):
                return previous
        rows = self.run_pass(BoxPass(self.sam), embeddings[image], boxes[image, cls])
        decoded = rows.gather(1, cls[:, None, None, None].expand(-1, 1, *rows.shape[-2:])).squeeze(1)
        if previous is None:  # every pair, in row-major order
            return decoded.unflatten(0, (b, n))
        refined = previous.index_put((image, cls), decoded.to(previous.dtype))
        return torch.where(empty[..., None, None], previous, refined) if every_pair else refined

    def run_pass(self, decoder_pass: DecoderPass, *inputs: Tensor) -> Tensor:
        """A decoder pass: eager while a gradient reaches the decoder or the network is traced or exported, else
        by the decoder runtime (an export in a trained model's folder, see `decoder_runtime.py`)."""
        trained = torch.is_grad_enabled() and any(p.requires_grad for p in decoder_pass.parameters())
        if in_graph() or trained:
            return decoder_pass(*inputs)
        return self.decoder_runtime(decoder_pass, *inputs)

    def mix_in_gt_boxes(self, boxes: Tensor, empty: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Replace each (image, class) box by the jittered box of that class in `target` (B, 1, H, W) with
        probability `gt_box_prob`, where the class is present. `target` has the input's size and is framed
        like it (`geometry`), so the boxes are in the encoder's pixel coordinates."""
        masks = self.class_masks(target).float()
        gt, gt_empty = masks_to_boxes(to_model_frame(masks, self.img_size, self.geometry, mode="nearest") > 0.5)
        gt = jitter_boxes(gt, self.gt_box_jitter, SAM_JITTER_MAX_PX * self.img_size, self.img_size)
        use = (torch.rand(gt_empty.shape, device=gt.device) < self.gt_box_prob) & ~gt_empty
        return torch.where(use[..., None], gt, boxes), empty & ~use

    def labels(self, logits: Tensor) -> Tensor:
        """Per-class bool masks (B, N, h, w) of the argmax label map of foreground logits."""
        return self.class_masks(with_background(logits).argmax(1, keepdim=True))

    def class_masks(self, label_map: Tensor) -> Tensor:
        """Per-class bool masks (B, N, h, w) of a (B, 1, h, w) map of class indices (0 is background)."""
        return label_map == torch.arange(1, self.num_classes + 1, device=label_map.device)[:, None, None]

    def class_logits(self, logits: Tensor, size: Sequence[int]) -> Tensor:
        """Foreground logits at mask resolution -> float32 (B, N + 1, *size) with a zero background logit.

        float32 whatever the autocast dtype, so losses, softmax and thresholds never see bf16/fp16 logits.
        """
        return with_background(from_model_frame(logits.float(), size, self.img_size, self.geometry))


def in_graph() -> bool:
    """Whether the network is being traced, compiled or exported: then no step may depend on data values."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def minmax_content(x: Tensor, content: Sequence[int]) -> Tensor:
    """LiteMedSAM's intensity scaling: each image's content (the top-left `content` (h, w) of the padded input)
    min-max scaled to [0, 1] over all channels, the padding kept at 0."""
    h, w = content
    inside = torch.zeros_like(x[:1, :1])
    inside[..., :h, :w] = 1
    lo = x[..., :h, :w].amin(dim=(1, 2, 3), keepdim=True)
    hi = x[..., :h, :w].amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8) * inside


def with_background(logits: Tensor) -> Tensor:
    """(B, N, ...) foreground logits -> (B, N + 1, ...) with the background logit fixed at 0 as channel 0."""
    return F.pad(logits, (0, 0, 0, 0, 1, 0))
