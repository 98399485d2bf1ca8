"""Mistral 3 (Mistral-Small-3.1, Ministral 3): Pixtral images at their own resolution, rows of `[IMG]` tokens each
closed by `[IMG_BREAK]`, the last by `[IMG_END]`; 1-D positions."""

from __future__ import annotations

import torch
from torch import nn

from vcontrast.models.base import ModelAdapter


def pixtral_image_block_mask(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Boolean (B, T): the `[IMG]` tokens and the `[IMG_BREAK]` / `[IMG_END]` token right after each run of them.

    Pixtral's processor closes every row of `[IMG]` tokens with `[IMG_BREAK]` and the last row with `[IMG_END]`; they
    exist only because there is an image, so they belong to the image block. They are found by position (the token
    right after each `[IMG]` run), since model configs name only the `[IMG]` id.
    """
    image = input_ids == image_token_id
    closes_a_row = nn.functional.pad(image, (1, 0), value=False)[:, :-1] & ~image  # [IMG_BREAK] or [IMG_END]
    return image | closes_a_row


def has_pixtral_vision(config) -> bool:
    """Whether the model's vision tower is Pixtral's (Mistral 3, Pixtral-12B's `llava` layout, LightOnOCR, ...)."""
    return getattr(getattr(config, "vision_config", None), "model_type", None) == "pixtral"


class Mistral3Adapter(ModelAdapter):
    """Mistral 3 (`mistral3`): `pixel_values` (B, 3, H, W) padded to the largest image, plus `image_sizes`.

    The image block is the `[IMG]` tokens and the `[IMG_BREAK]` / `[IMG_END]` tokens between and after their rows:
    the break and end tokens exist only because there is an image, so the no-image pass drops them with the image
    tokens (see [`pixtral_image_block_mask`]).
    """

    model_types = ("mistral3",)
    pixel_keys = ("pixel_values", "image_sizes")

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return pixtral_image_block_mask(input_ids, self.image_token_id)
