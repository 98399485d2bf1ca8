"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: flattened patches + `image_grid_thw`, and 3-D M-RoPE position ids."""

from __future__ import annotations

from types import MappingProxyType

import torch

from vcontrast.models.base import ModelAdapter


class Qwen2VLAdapter(ModelAdapter):
    """Qwen2-VL / Qwen2.5-VL (`qwen2_vl`, `qwen2_5_vl`).

    Position ids are (3, B, T) M-RoPE ids (temporal, height, width) from the model's own `get_rope_index`, computed
    with the image present; text tokens keep them when the image tokens are dropped. We call `get_rope_index`
    directly rather than the forward, because the forward caches `rope_deltas` on the model as a side effect.
    """

    model_types = ("qwen2_vl", "qwen2_5_vl")
    pixel_keys = ("pixel_values", "image_grid_thw")
    token_keys = ("input_ids", "attention_mask", "mm_token_type_ids")
    generated_token_types = MappingProxyType({"mm_token_type_ids": 0})

    def position_ids(self, inputs: dict) -> torch.Tensor:
        if inputs.get("image_grid_thw") is None:
            return super().position_ids(inputs).unsqueeze(0).expand(3, -1, -1)
        if inputs.get("mm_token_type_ids") is None:
            raise ValueError("Qwen2-VL inputs with an image need `mm_token_type_ids` (the processor returns it)")
        pos, _ = self.backbone().get_rope_index(
            inputs["input_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
        )
        return pos


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL (`qwen3_vl`): Qwen2-VL's inputs and `get_rope_index`, with interleaved M-RoPE sections, and deepstack:
    features of intermediate vision layers are added to the hidden states of the image positions in the first LM
    layers. The no-image pass runs without pixels, so it injects nothing, and keeps the 3-D positions the text
    tokens have with the image.
    """

    model_types = ("qwen3_vl",)
