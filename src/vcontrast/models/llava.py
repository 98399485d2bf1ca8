"""LLaVA-1.5, LLaVA-NeXT and ViP-LLaVA (and the built-in toy model, which is a LLaVA): plain 1-D RoPE, `<image>`
tokens."""

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
