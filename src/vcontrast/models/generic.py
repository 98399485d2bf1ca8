"""The generic adapter: an image-text-to-text model of a family vcontrast has no adapter for, used when what the
contrast needs can be read from it and nothing it cannot check is in play.

Accepted: the config names an image token id (`image_token_id` / `image_token_index`), the language model uses 1-D
rotary positions, and the forward takes nothing beyond the inputs LLaVA-like models take (`pixel_values`,
`image_sizes`, `pixel_attention_mask`, vision-feature options, video inputs, which `check_inputs` refuses in a
batch, as for every family). Such a model is used with a one-line warning naming it as untested: its image block is
the image tokens only, positions come from the attention mask, generated tokens carry no token type.

Refused, with a ValueError naming the class and how to add an adapter: no image token id; multimodal rotary
positions (M-RoPE: `mrope_section` in the rope parameters, or a `get_rope_index` method); any other forward input
(token types, image position ids, per-layer inputs, ...), which may change positions or attention in a way a generic
adapter cannot prove right; an image block of more than the image tokens, which "no image" would have to drop too: a
Pixtral vision tower (rows closed by `[IMG_BREAK]`/`[IMG_END]`, as in LightOnOCR and Mistral Large 3/4), or a
processor that names more than one image token id (`check_processor`, which CRG calls).
"""

from __future__ import annotations

import inspect
import logging

from torch import nn

from vcontrast.models.base import ModelAdapter
from vcontrast.models.mistral3 import has_pixtral_vision

logger = logging.getLogger(__name__)

# Forward inputs every causal VLM takes, or that only carry options, or video inputs (a batch carrying one is refused
# by `ModelAdapter.check_inputs`, so the model never receives them).
_PLAIN_INPUTS = {
    "self",
    "input_ids",
    "attention_mask",
    "position_ids",
    "cache",
    "past_key_values",
    "inputs_embeds",
    "labels",
    "use_cache",
    "logits_to_keep",
    "mm_encoder_outputs",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "cache_position",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "pixel_values_videos",
    "image_sizes_videos",
    "kwargs",
}
# Forward inputs that carry the image; they travel (and are dropped or swapped) as the image does.
_PIXEL_INPUTS = ("pixel_values", "image_sizes", "pixel_attention_mask")
_HOW_TO_ADD = (
    "write a `vcontrast.models.base.ModelAdapter` subclass for its family (image token, pixel inputs, "
    "position ids) and register it in `vcontrast.models.ADAPTERS`, with a tiny model in tests/tiny_models.py"
)
_warned: set[str] = set()


class GenericAdapter(ModelAdapter):
    """An adapter for an untested image-text-to-text model with an image token id and 1-D positions (see the module
    doc). Build it with `generic_adapter`, which checks the model first."""

    tested = False

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.pixel_keys = tuple(key for key in _PIXEL_INPUTS if key in _forward_inputs(self.model))

    def check_processor(self, processor) -> None:
        """As [`ModelAdapter.check_processor`], and raise if the processor writes more than one token id for an image
        (markers or row breaks around the image tokens): which of them belong to the image block, and so leave with
        it under "no image", is family knowledge the generic adapter does not have."""
        super().check_processor(processor)
        from vcontrast._compat import processor_image_token_ids

        ids = sorted(set(processor_image_token_ids(processor)))
        if len(ids) > 1:
            raise ValueError(
                f"{type(self.model).__name__} (model type {self.config.model_type!r}) is not supported by the generic "
                f"adapter: its processor {type(processor).__name__} writes several token ids for an image ({ids}), "
                f"and which of them the no-image condition has to drop is not known; to add it, {_HOW_TO_ADD}"
            )


def generic_adapter(model: nn.Module, supported: list[str]) -> GenericAdapter:
    """A `GenericAdapter` for `model`, with a one-line warning (once per class) that it is untested.

    Args:
        model (`PreTrainedModel`): the unwrapped model.
        supported (`list[str]`): the model types with an adapter, named in the refusal.

    Raises:
        `ValueError`: the model has no image token id, uses multimodal rotary positions, or takes forward inputs a
            generic adapter cannot prove right; the message names the class and how to add an adapter.
    """
    name = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    reason = _refusal(model)
    if reason is not None:
        raise ValueError(
            f"{name} (model type {model_type!r}) is not supported: {reason}; supported model types: "
            f"{', '.join(supported)}. To add it, {_HOW_TO_ADD}"
        )
    if name not in _warned:
        _warned.add(name)
        logger.warning(
            "%s (model type %r) has no vcontrast adapter and is untested: using the generic adapter (image token id "
            "%s, 1-D positions)",
            name,
            model_type,
            GenericAdapter(model).image_token_id,
        )
    return GenericAdapter(model)


def _refusal(model: nn.Module) -> str | None:
    # Why a generic adapter cannot be proven right for `model`, or None.
    config = getattr(model, "config", None)
    if config is None or not any(
        getattr(config, key, None) is not None for key in ("image_token_id", "image_token_index")
    ):
        return "its config names no image token id (`image_token_id` / `image_token_index`)"
    text = config.get_text_config()
    for key in ("rope_parameters", "rope_scaling"):
        rope = getattr(text, key, None)
        if isinstance(rope, dict) and (
            "mrope_section" in rope or "mrope" in (rope.get("rope_type"), rope.get("type"))
        ):
            return "its language model uses multimodal rotary positions (M-RoPE)"
    backbone = getattr(model, "model", None)
    if backbone is None or hasattr(backbone, "get_rope_index"):
        return "it builds multimodal position ids (`get_rope_index`)" if backbone is not None else "it has no `.model`"
    if has_pixtral_vision(config):
        return (
            "its vision tower is Pixtral's, whose processor closes each row of image tokens with `[IMG_BREAK]` / "
            "`[IMG_END]`: they belong to the image block (as `Mistral3Adapter` has it), which the generic adapter, "
            "knowing only the image token id, would keep"
        )
    extra = sorted(set(_forward_inputs(model)) - _PLAIN_INPUTS - set(_PIXEL_INPUTS))
    if extra:
        return f"its forward takes {', '.join(f'`{key}`' for key in extra)}, which may change positions or attention"
    return None


def _forward_inputs(model: nn.Module) -> list[str]:
    return list(inspect.signature(type(model).forward).parameters)
