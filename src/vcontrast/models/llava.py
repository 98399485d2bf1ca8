"""LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision and ViP-LLaVA (and the built-in toy model, which is a LLaVA): plain 1-D
RoPE, `<image>` tokens."""

from vcontrast.models.base import ModelAdapter


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 (`llava`): `pixel_values` (B, 3, H, W)."""

    model_types = ("llava",)


class LlavaNextAdapter(ModelAdapter):
    """LLaVA-NeXT (`llava_next`): any-resolution crops in `pixel_values` (B, P, 3, H, W) plus `image_sizes`."""

    model_types = ("llava_next",)
    pixel_keys = ("pixel_values", "image_sizes")


class VipLlavaAdapter(ModelAdapter):
    """ViP-LLaVA (`vipllava`), the CRG paper's visual-prompt model: LLaVA-1.5's inputs (`pixel_values` (B, 3, H, W));
    its projector reads several CLIP layers, which changes nothing for the contrast."""

    model_types = ("vipllava",)


class LlavaOnevisionAdapter(ModelAdapter):
    """LLaVA-OneVision (`llava_onevision`): any-resolution crops in `pixel_values` (B, P, 3, H, W) plus `image_sizes`,
    as LLaVA-NeXT; a Qwen2 language model with 1-D positions. One image per sample (the processor's
    `batch_num_images` is left out, which the model reads as one)."""

    model_types = ("llava_onevision",)
    pixel_keys = ("pixel_values", "image_sizes")
