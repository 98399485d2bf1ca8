"""Seeing CAL's weights: per-token logit gains and weights of one image and text, as terminal text or an HTML heatmap
(the paper's Figure 2a). `vcontrast cal show IMAGE "TEXT"` is a thin wrapper around these."""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
from torch import nn

from vcontrast.cal.config import CALConfig
from vcontrast.cal.loss import cal_deltas, token_weights

__all__ = ["TokenWeight", "render_html", "render_terminal", "token_report"]


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


def _level(weight: float, alpha: float, beta: float) -> float:
    return min(max((weight - alpha) / (beta - alpha), 0.0), 1.0)


def render_terminal(report: list[TokenWeight], config: CALConfig | None = None, *, color: bool = True) -> str:
    """One line per token (`text  delta  weight`), the text coloured from grey (weight alpha) to red (beta) with
    ANSI 256-colour codes (`color=False` for plain text)."""
    config = CALConfig() if config is None else config
    palette = [244, 250, 229, 222, 215, 209, 203, 196]  # grey -> yellow -> red
    lines = [f"{'token':<16} {'delta':>8} {'weight':>7}"]
    for t in report:
        name = repr(t.text)[1:-1]
        cell = f"{name:<16}"
        if color:
            code = palette[round(_level(t.weight, config.alpha, config.beta) * (len(palette) - 1))]
            cell = f"\x1b[38;5;{code}m{cell}\x1b[0m"
        lines.append(f"{cell} {t.delta:>8.3f} {t.weight:>7.3f}")
    return "\n".join(lines)


def render_html(report: list[TokenWeight], config: CALConfig | None = None, title: str = "CAL token weights") -> str:
    """A standalone HTML page: the text with each token's background shaded by its weight (white at alpha, red at
    beta) and its delta and weight in a tooltip, as in the paper's Figure 2a."""
    config = CALConfig() if config is None else config
    spans = []
    for t in report:
        level = _level(t.weight, config.alpha, config.beta)
        green_blue = round(255 * (1 - level))
        tip = f"delta {t.delta:.3f}, weight {t.weight:.3f}"
        spans.append(
            f'<span title="{html.escape(tip)}" style="background: rgb(255,{green_blue},{green_blue}); '
            f'padding: 2px 1px; margin: 0 1px">{html.escape(t.text)}</span>'
        )
    legend = f"weight {config.alpha:g} (white) to {config.beta:g} (red); hover a token for its delta and weight"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family: sans-serif'><h3>{html.escape(title)}</h3>"
        f"<p style='font-size: 1.3em; line-height: 2'>{''.join(spans)}</p><p><small>{legend}</small></p></body></html>"
    )
