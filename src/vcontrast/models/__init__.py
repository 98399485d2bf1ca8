"""Model adapters, one per family, chosen by `config.model_type`."""

from __future__ import annotations

from torch import nn

from vcontrast.models.base import ModelAdapter, forward_model, unwrap_model
from vcontrast.models.gemma3 import Gemma3Adapter, Gemma4Adapter
from vcontrast.models.generic import GenericAdapter, generic_adapter
from vcontrast.models.idefics3 import Idefics3Adapter
from vcontrast.models.internvl import InternVLAdapter
from vcontrast.models.llava import LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, VipLlavaAdapter
from vcontrast.models.mistral3 import Mistral3Adapter
from vcontrast.models.paligemma import PaliGemmaAdapter
from vcontrast.models.qwen2_vl import Qwen2VLAdapter, Qwen3VLAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    model_type: cls
    for cls in (
        LlavaAdapter,
        LlavaNextAdapter,
        VipLlavaAdapter,
        LlavaOnevisionAdapter,
        Qwen2VLAdapter,
        Qwen3VLAdapter,
        Idefics3Adapter,
        PaliGemmaAdapter,
        Gemma3Adapter,
        Gemma4Adapter,
        InternVLAdapter,
        Mistral3Adapter,
    )
    for model_type in cls.model_types
}

__all__ = ["ADAPTERS", "GenericAdapter", "ModelAdapter", "get_adapter", "supported_model_types", "unwrap_model"]


def supported_model_types() -> list[str]:
    """The `config.model_type` values vcontrast supports."""
    return sorted(ADAPTERS)


def get_adapter(model: nn.Module | ModelAdapter) -> ModelAdapter:
    """The adapter for `model`'s family.

    A model type without an adapter gets the generic one (`vcontrast.models.generic`) with a one-line warning that it
    is untested, if its config names an image token id and its language model uses 1-D positions; otherwise a
    ValueError names the class, the supported model types and how to add an adapter.

    Examples:

    ```python
    >>> adapter = get_adapter(model)  # a LlavaForConditionalGeneration
    >>> adapter.image_token_id
    32000
    ```
    """
    if isinstance(model, ModelAdapter):
        return model
    inner = unwrap_model(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        adapter = generic_adapter(inner, supported_model_types())
        adapter.forward_model = forward_model(model)  # keep an FSDP wrapper for forwards, as every adapter does
        return adapter
    return ADAPTERS[model_type](model)
