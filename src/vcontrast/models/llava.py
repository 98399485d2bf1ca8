"""LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision and ViP-LLaVA (and the built-in toy model, which is a LLaVA): plain 1-D
RoPE, `<image>` tokens."""

import torch

from vcontrast.models.base import ModelAdapter
from vcontrast.models.mistral3 import has_pixtral_vision, pixtral_image_block_mask


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 (`llava`): `pixel_values` (B, 3, H, W).

    Pixtral-12B's transformers layout is a `llava` model too, with a Pixtral vision tower: its images keep their own
    size (`pixel_values` padded to the largest, plus `image_sizes`, which travels with the pixels), and its image
    block is Mistral 3's: the `[IMG]` rows with the `[IMG_BREAK]` / `[IMG_END]` tokens that close them.
    """

    model_types = ("llava",)
    pixel_keys = ("pixel_values", "image_sizes")

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        if has_pixtral_vision(self.config):
            return pixtral_image_block_mask(input_ids, self.image_token_id)
        return super().image_token_mask(input_ids)


class LlavaNextAdapter(ModelAdapter):
    """LLaVA-NeXT (`llava_next`): any-resolution crops in `pixel_values` (B, P, 3, H, W) plus `image_sizes`."""

    model_types = ("llava_next",)
    pixel_keys = ("pixel_values", "image_sizes")


class VipLlavaAdapter(ModelAdapter):
    """ViP-LLaVA (`vipllava`), the CRG paper's visual-prompt model: LLaVA-1.5's inputs (`pixel_values` (B, 3, H, W));
    its projector reads several CLIP layers, which changes nothing for the contrast."""

    model_types = ("vipllava",)


class LlavaOnevisionAdapter(ModelAdapter):
    """LLaVA-OneVision (`llava_onevision`): any-resolution crops in `pixel_values` (images, P, 3, H, W) plus
    `image_sizes`, as LLaVA-NeXT; a Qwen2 language model with 1-D positions. `batch_num_images` (images per sample)
    travels with the pixels: the model crops only a sample's single image and takes the base view of each image of
    a multi-image sample (without it, it reads every image as a single one and crashes on several)."""

    model_types = ("llava_onevision",)
    pixel_keys = ("pixel_values", "image_sizes", "batch_num_images")
