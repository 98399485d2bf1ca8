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
    ValueError names the class, the supported model types and how to add an adapter. A model without its language
    model head (`AutoModel` gives e.g. a `LlavaModel`) raises a ValueError naming the class to load instead.

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
    _check_head(inner, model_type)
    if model_type not in ADAPTERS:
        adapter = generic_adapter(inner, supported_model_types())
        adapter.forward_model = forward_model(model)  # keep an FSDP wrapper for forwards, as every adapter does
        return adapter
    return ADAPTERS[model_type](model)


def _check_head(model: nn.Module, model_type: str | None) -> None:
    # A base VLM (`AutoModel` -> `LlavaModel`, `Qwen2VLModel`) has no head to score tokens with and no `.model`
    # backbone; without this check it gets an adapter and fails later with an AttributeError deep inside.
    get_head = getattr(model, "get_output_embeddings", None)
    has_backbone = model_type not in ADAPTERS or isinstance(getattr(model, "model", None), nn.Module)
    if get_head is not None and get_head() is not None and has_backbone:
        return  # (the generic adapter names a missing `.model` itself)
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    name = type(model).__name__
    wanted = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type) or "its *ForConditionalGeneration class"
    raise ValueError(
        f"{name} (model type {model_type!r}) has no language-model head (`get_output_embeddings()` is None) or no "
        f"`.model` backbone: vcontrast scores tokens with the head of a full VLM; load it with {wanted} or "
        "AutoModelForImageTextToText, not AutoModel"
    )
