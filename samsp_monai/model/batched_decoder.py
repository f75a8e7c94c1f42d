"""SAM's mask decoder for B images x N prompts in one transformer call."""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder
from torch import Tensor, nn

SAM_MASK_TOKENS = 4  # SAM's single-mask token 0 (its output for unambiguous prompts such as boxes) + 3 multimask


class BatchedMaskDecoder(MaskDecoder):
    """`MaskDecoder` whose prompt rows are grouped per image: row r attends to image r // (rows / images).

    segment_anything repeats every image embedding once per prompt row, which is right for one image with
    many prompts but pairs B images with B * B rows when each image brings its own prompts. Here `R` prompt
    rows meet `B` images as `R / B` consecutive rows per image (one image: every row, exactly as upstream),
    and a single prompt row is shared by all images (the prompt-free pass). The parameters, and so the
    state-dict keys of official checkpoints, are those of `MaskDecoder`.

    Classes: SAM's four mask tokens are kept as they are, and each class after the first gets one more token
    behind them. Class 1 is SAM's token 0, class c >= 2 is token 2 + c (`class_tokens`), so with one class the
    decoder is SAM's own, token for token: the output tokens attend to each other in the two-way transformer,
    so dropping or duplicating any of SAM's tokens would change even token 0's box output.
    """

    def __init__(self, *, num_classes: int, transformer: nn.Module, transformer_dim: int, **kwargs) -> None:
        super().__init__(
            num_multimask_outputs=SAM_MASK_TOKENS - 2 + num_classes,
            transformer=transformer,
            transformer_dim=transformer_dim,
            **kwargs,
        )
        self.class_tokens = [0, *range(SAM_MASK_TOKENS, SAM_MASK_TOKENS + num_classes - 1)]

    def class_logits(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor) -> Tensor:
        """Low-resolution logits (rows, num_classes, h, w): the mask of each class token."""
        return self.predict_masks(image_embeddings, image_pe, sparse, dense)[0][:, self.class_tokens]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        images, rows = image_embeddings.shape[0], sparse_prompt_embeddings.shape[0]
        if rows % images and rows != 1:
            raise ValueError(f"{rows} prompt rows cannot be grouped over {images} images")
        rows = max(rows, images)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        prompts = sparse_prompt_embeddings.expand(rows, -1, -1)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(rows, -1, -1), prompts), dim=1)
        src = torch.repeat_interleave(image_embeddings, rows // images, dim=0) + dense_prompt_embeddings
        pos_src = image_pe.expand(rows, -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)
