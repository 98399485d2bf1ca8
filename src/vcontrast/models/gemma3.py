"""Gemma 3 and Gemma 4: image soft tokens attended bidirectionally (marked by token types), 1-D positions."""

from __future__ import annotations

from types import MappingProxyType

from torch import nn

from vcontrast.models.base import ModelAdapter


class Gemma3Adapter(ModelAdapter):
    """Gemma 3 (`gemma3`).

    `token_type_ids` (1 = image soft token, 0 = text) make the image tokens attend to each other bidirectionally; they
    travel with the tokens, so the no-image pass (image tokens dropped) is plain causal text, and generated tokens get
    type 0. The image block of the no-image condition is the soft tokens only: the `<start_of_image>` /
    `<end_of_image>` markers around them are text tokens the model also reads without an image.

    `Gemma3ForConditionalGeneration` applies no final logit soft-cap (only `Gemma3ForCausalLM` reads
    `final_logit_softcapping`), so none is applied here either, whatever the config says.

    Its sliding-window layers (`config.text_config.sliding_window` tokens) limit the no-image pass to sequences that
    fit in the window (see `ModelAdapter.text_only_inputs`).
    """

    model_types = ("gemma3",)
    token_keys = ("input_ids", "attention_mask", "token_type_ids")
    generated_token_types = MappingProxyType({"token_type_ids": 0})

    def batch_images(self, images: list) -> list:
        # The processor reads a flat list as several images of one sample; one list per sample is unambiguous.
        return [[image] for image in images]

    def output_head(self) -> tuple[nn.Module, float | None]:
        return self.model.get_output_embeddings(), None


class Gemma4Adapter(Gemma3Adapter):
    """Gemma 4 (`gemma4`), image and text: Gemma 3's pattern with `mm_token_type_ids` (1 = image soft token) for the
    bidirectional block, variable-resolution `pixel_values` (B, patches, 3 * p * p) with their 2-D
    `image_position_ids`, and per-layer input embeddings the model derives from `input_ids` (so the no-image pass,
    which drops the image tokens, gives every text token the same ones). Unlike Gemma 3's, its forward applies the
    config's final logit soft-cap, and so does the adapter. Video and audio inputs are not supported.
    """

    model_types = ("gemma4",)
    pixel_keys = ("pixel_values", "image_position_ids")
    token_keys = ("input_ids", "attention_mask", "mm_token_type_ids")
    generated_token_types = MappingProxyType({"mm_token_type_ids": 0})

    def output_head(self) -> tuple[nn.Module, float | None]:
        return ModelAdapter.output_head(self)
