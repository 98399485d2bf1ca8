"""PaliGemma: prefix-LM attention (bidirectional over image + prompt, causal over the suffix), 1-indexed positions."""

from types import MappingProxyType

from vcontrast.models.base import ModelAdapter


class PaliGemmaAdapter(ModelAdapter):
    """PaliGemma 1 and 2 (`paligemma`). `token_type_ids` (0 = prefix, 1 = suffix) decide the prefix block, so they
    travel with the tokens when image tokens are dropped; positions count from 1 as in the model's own forward."""

    model_types = ("paligemma",)
    token_keys = ("input_ids", "attention_mask", "token_type_ids")
    first_position = 1
    generated_token_types = MappingProxyType({"token_type_ids": 1})
    text_after_prompt = "\n"  # the processor writes `<image>...<bos>{prompt}\n` and the answer follows
