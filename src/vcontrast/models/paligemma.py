"""PaliGemma: prefix-LM attention (bidirectional over image + prompt, causal over the suffix), 1-indexed positions."""

from types import MappingProxyType

import torch

from vcontrast.models.base import ModelAdapter


class PaliGemmaAdapter(ModelAdapter):
    """PaliGemma 1 and 2 (`paligemma`). `token_type_ids` (0 = prefix, 1 = suffix) decide the prefix block, so they
    travel with the tokens when image tokens are dropped; positions count from 1 as in the model's own forward.

    Labels have to lie in the causal suffix (`token_type_ids` 1, what the processor gives the `suffix=` text): inside
    the bidirectional prefix the position that predicts a label also attends to it, so its score would see the
    answer. Such labels are refused (`check_scored_labels`).
    """

    model_types = ("paligemma",)
    token_keys = ("input_ids", "attention_mask", "token_type_ids")
    first_position = 1
    generated_token_types = MappingProxyType({"token_type_ids": 1})
    text_after_prompt = "\n"  # the processor writes `<image>...<bos>{prompt}\n` and the answer follows

    def check_scored_labels(self, inputs: dict, labels: torch.Tensor) -> None:
        from vcontrast.contrast import IGNORE_INDEX  # (vcontrast.contrast imports the adapters)

        types = inputs.get("token_type_ids")
        if types is None:  # no prefix block: the model attends causally everywhere
            return
        scored = (labels != IGNORE_INDEX) & inputs["attention_mask"].bool()
        scored[:, 0] = False  # nothing predicts the first position
        leaked = scored & (types == 0)
        if bool(leaked.any()):
            row, position = (int(i) for i in leaked.nonzero()[0])
            raise ValueError(
                f"{int(leaked.sum())} label(s) of the PaliGemma batch lie in its bidirectional prefix "
                f"(`token_type_ids` 0; first: row {row}, position {position}), where the position that predicts a "
                "label also attends to it, so its score would see the answer; pass the answer as the processor's "
                "`suffix=` (or set `token_type_ids` to 1 on the answer tokens)"
            )
