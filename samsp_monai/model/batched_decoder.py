"""SAM's mask decoder for B images x N prompts in one transformer call."""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder
from torch import Tensor


class BatchedMaskDecoder(MaskDecoder):
    """`MaskDecoder` whose prompt rows are grouped per image: row r attends to image r // (rows / images).

    segment_anything repeats every image embedding once per prompt row, which is right for one image with
    many prompts but pairs B images with B * B rows when each image brings its own prompts. Here `R` prompt
    rows meet `B` images as `R / B` consecutive rows per image (one image: every row, exactly as upstream),
    and a single prompt row is shared by all images (the prompt-free pass). The parameters, and so the
    state-dict keys of official checkpoints, are those of `MaskDecoder`.
    """

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
