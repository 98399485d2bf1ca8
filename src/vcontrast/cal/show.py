"""Seeing CAL's weights: the per-token logit gains and weights of one image and text.

[`token_report`] computes them; `vcontrast.viz` draws them (`token_heatmap` for a PNG like the paper's Figure 2a,
`token_heatmap_html`, `token_heatmap_ansi` for a terminal). `vcontrast cal show IMAGE "TEXT"` puts the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vcontrast.cal.config import CALConfig
from vcontrast.cal.loss import cal_deltas, token_weights

__all__ = ["TokenWeight", "token_report"]


@dataclass
class TokenWeight:
    """One text token: its id and text, its logit gain from the image (`delta`) and its CAL weight."""

    token_id: int
    text: str
    delta: float
    weight: float


def _prefix(processor, prompt: str) -> str:
    # The processor's chat template with one user turn (image, then prompt), ready for the assistant's answer.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return prompt


@torch.no_grad()
def token_report(
    model: nn.Module,
    processor,
    image,
    text: str,
    prompt: str = "",
    config: CALConfig | None = None,
    *,
    separator: str = " ",
) -> list[TokenWeight]:
    """The logit gain and CAL weight of every token of `text`, as the answer to `prompt` about `image`.

    The sample is the processor's chat prefix (user turn: image + prompt; generation prompt) followed by
    `separator + text`; the tokens after the prefix are the labels. Both passes run in eval mode without gradient.

    Args:
        model (`PreTrainedModel`): a supported VLM.
        processor (`ProcessorMixin`): its processor.
        image (`PIL.Image.Image`): the image.
        text (`str`): the text to score (a caption or an answer).
        prompt (`str`, *optional*, defaults to `""`): the user's question.
        config (`CALConfig`, *optional*): alpha, beta, window and the contrast condition (image-space conditions are
            not supported here; use `NoImage()` or `"attention_mask"`).
        separator (`str`, *optional*, defaults to `" "`): text between the prefix and `text`.

    Returns:
        `list[TokenWeight]`: one entry per label token, in order.

    Examples:

    ```python
    >>> for t in token_report(model, processor, image, "a red circle left of a blue square"):
    ...     print(t.text, round(t.delta, 2), round(t.weight, 2))
    ```
    """
    config = CALConfig() if config is None else config
    if config.uses_pixels:
        raise ValueError(f"token_report supports NoImage and 'attention_mask' contrasts, not {config.contrast!r}")
    prefix = _prefix(processor, prompt)
    device = next(model.parameters()).device
    n_prefix = processor(images=[image], text=[prefix], return_tensors="pt")["input_ids"].shape[1]
    batch = dict(processor(images=[image], text=[prefix + separator + text], return_tensors="pt"))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, n_prefix:] = batch["input_ids"][:, n_prefix:]
    batch["labels"] = labels.masked_fill(batch["attention_mask"] == 0, -100)
    delta, mask = cal_deltas(model, batch, config)
    weights = token_weights(delta, mask, config.alpha, config.beta, config.window)
    tokenizer = getattr(processor, "tokenizer", processor)
    out = []
    for p in mask[0].nonzero().squeeze(-1).tolist():
        token_id = int(batch["input_ids"][0, p])
        out.append(TokenWeight(token_id, tokenizer.decode([token_id]), float(delta[0, p]), float(weights[0, p])))
    return out
