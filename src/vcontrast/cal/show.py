"""Seeing CAL's weights: the per-token logit gains and weights of one image and text.

[`token_report`] computes them; [`report_heatmap`] (PNG) and [`report_heatmap_html`] draw them as the paper's
Figure 2a does: each token on the colour of its raw logit gain (diverging: negative blue, 0 white, `>= beta` red), with
its clamped CAL weight as a second row (white at alpha, red at beta) and a legend. The weight alone cannot show what
the image argues against: it never goes below alpha. `vcontrast cal show IMAGE "TEXT"` puts it together.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torch import nn

from vcontrast.cal.config import CALConfig
from vcontrast.cal.loss import cal_deltas, token_weights
from vcontrast.candidates import candidate_separator, shared_prefix_length
from vcontrast.viz import _FONT, _canvas, _text_size, _weight_colour, _wrap_tokens

__all__ = ["TokenWeight", "delta_colour", "report_heatmap", "report_heatmap_html", "token_report", "weight_colour"]


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
    separator: str | None = None,
) -> list[TokenWeight]:
    """The logit gain and CAL weight of every token of `text`, as the answer to `prompt` about `image`.

    The sample is the processor's chat prefix (user turn: image + prompt; generation prompt) followed by
    `separator + text`; the labels are the tokens the model itself would produce for `text` after the prefix (the
    candidate-token rule of [`vcontrast.candidates`]: joint tokenisation, the tail after the shared prefix). Both
    passes run in eval mode without gradient.

    Args:
        model (`PreTrainedModel`): a supported VLM.
        processor (`ProcessorMixin`): its processor.
        image (`PIL.Image.Image`): the image.
        text (`str`): the text to score (a caption or an answer).
        prompt (`str`, *optional*, defaults to `""`): the user's question.
        config (`CALConfig`, *optional*): alpha, beta, window and the contrast condition (image-space conditions are
            not supported here; use `NoImage()` or `"attention_mask"`).
        separator (`str`, *optional*): text between the prefix and `text`; by default the candidate rule's (one
            space after `ASSISTANT:`, none after Qwen's `assistant\\n` or a special token).

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
    tokenizer = getattr(processor, "tokenizer", processor)
    if separator is None:
        specials = [token for token in getattr(tokenizer, "all_special_tokens", []) if token]
        separator = candidate_separator(prefix, text, specials)
    device = next(model.parameters()).device
    prefix_ids = processor(images=[image], text=[prefix], return_tensors="pt")["input_ids"][0].tolist()
    batch = dict(processor(images=[image], text=[prefix + separator + text], return_tensors="pt"))
    # A token merging the prefix's end with the text's start is the text's (as in ConversationCollator).
    n_prefix = shared_prefix_length(prefix_ids, batch["input_ids"][0].tolist())
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, n_prefix:] = batch["input_ids"][:, n_prefix:]
    batch["labels"] = labels.masked_fill(batch["attention_mask"] == 0, -100)
    delta, mask = cal_deltas(model, batch, config)
    weights = token_weights(delta, mask, config.alpha, config.beta, config.window)
    out = []
    for p in mask[0].nonzero().squeeze(-1).tolist():
        token_id = int(batch["input_ids"][0, p])
        out.append(TokenWeight(token_id, tokenizer.decode([token_id]), float(delta[0, p]), float(weights[0, p])))
    return out


def delta_colour(delta: float, beta: float = 5.0) -> tuple[int, int, int]:
    """Diverging colour of a raw logit gain: blue below 0 (full at `-beta`), white at 0, red at `beta` and above."""
    return _weight_colour(delta, 0.0, beta)


def weight_colour(weight: float, alpha: float = 1.0, beta: float = 5.0) -> tuple[int, int, int]:
    """Colour of a CAL weight: white at `alpha` (the floor), red at `beta`."""
    return _weight_colour(weight, alpha, beta)


def _legend_bar(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, colours, labels: Sequence[str]) -> None:
    # A horizontal colour bar of `width` px with `labels` spread evenly below it.
    draw.rectangle([x - 1, y - 1, x + width, y + 9], outline=(120, 120, 120))
    for i in range(width):
        draw.line([(x + i, y), (x + i, y + 8)], fill=colours(i / max(width - 1, 1)))
    for i, label in enumerate(labels):
        lx = x + i * width // max(len(labels) - 1, 1) - _text_size(label)[0] // 2
        draw.text((lx, y + 11), label, fill=(0, 0, 0), font=_FONT)


def report_heatmap(
    report: Sequence[TokenWeight],
    *,
    alpha: float = 1.0,
    beta: float = 5.0,
    width: int = 520,
    title: str | None = None,
    image: Image.Image | None = None,
) -> Image.Image:
    """A PNG-ready picture of a [`token_report`]: each token on its raw gain's colour, its weight in a strip below.

    Args:
        report (`list[TokenWeight]`): the tokens with their `delta` and `weight`.
        alpha, beta (`float`): CAL's clamp range: the gain scale runs from `-beta` (blue) through 0 (white) to `beta`
            (red); the weight scale from `alpha` (white) to `beta` (red).
        width (`int`): text width in pixels before wrapping.
        title (`str`, *optional*): a line above the tokens.
        image (`PIL.Image`, *optional*): shown on the left, scaled to the picture's height (at least 128 px).

    Examples:

    ```python
    >>> report_heatmap(token_report(model, processor, image, "a red circle")).save("show.png")
    ```
    """
    pad, text_h = 8, _text_size("Ag")[1]
    box_h, strip_h = text_h + 6, 7
    line_h = box_h + strip_h + 8
    labels = [token.text.strip() or repr(token.text) for token in report]
    placed, bottom = _wrap_tokens(labels, width, line_h, top=pad + (text_h + 8 if title else 0), gap=3)
    legend_y = bottom + line_h + pad
    canvas, offset = _canvas(width, legend_y + 2 * (8 + text_h + 14) + pad, image)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((offset + pad, pad), title, fill=(0, 0, 0), font=_FONT)
    for (x, y, w, label), token in zip(placed, report, strict=True):
        draw.rectangle([offset + x, y, offset + x + w, y + box_h], fill=delta_colour(token.delta, beta))
        draw.text((offset + x + 3, y + 3), label, fill=(0, 0, 0), font=_FONT)
        draw.rectangle(
            [offset + x, y + box_h + 2, offset + x + w, y + box_h + 2 + strip_h],
            fill=weight_colour(token.weight, alpha, beta),
        )
    bar_x, bar_w = offset + pad + 150, min(240, width - 160 - 2 * pad)
    draw.text((offset + pad, legend_y), "logit gain (box)", fill=(0, 0, 0), font=_FONT)
    _legend_bar(
        draw,
        bar_x,
        legend_y,
        bar_w,
        lambda t: delta_colour((2 * t - 1) * beta, beta),
        [f"{-beta:g}", "0", f"{beta:g}"],
    )
    legend_y += 8 + text_h + 14
    draw.text((offset + pad, legend_y), "CAL weight (strip)", fill=(0, 0, 0), font=_FONT)
    _legend_bar(
        draw,
        bar_x,
        legend_y,
        bar_w,
        lambda t: weight_colour(alpha + t * (beta - alpha), alpha, beta),
        [f"{alpha:g}", f"{beta:g}"],
    )
    return canvas


def report_heatmap_html(
    report: Sequence[TokenWeight], *, alpha: float = 1.0, beta: float = 5.0, title: str = ""
) -> str:
    """A standalone HTML page of a [`token_report`]: a table with one column per token, the token on its raw gain's
    colour, then the gain, then the clamped weight on its own colour, and a legend.

    Examples:

    ```python
    >>> Path("show.html").write_text(report_heatmap_html(token_report(model, processor, image, "a red circle")))
    ```
    """

    def cell(text: str, colour: tuple[int, int, int], cls: str, tip: str) -> str:
        r, g, b = colour
        return f'<td class="{cls}" title="{tip}" style="background:rgb({r},{g},{b})">{html.escape(text)}</td>'

    tokens, deltas, weights = [], [], []
    for t in report:
        tip = f"delta {t.delta:.3f}, weight {t.weight:.3f}"
        tokens.append(cell(t.text.strip() or repr(t.text), delta_colour(t.delta, beta), "token", tip))
        deltas.append(cell(f"{t.delta:.2f}", delta_colour(t.delta, beta), "delta", tip))
        weights.append(cell(f"{t.weight:.2f}", weight_colour(t.weight, alpha, beta), "weight", tip))

    def gradient(colours: list[tuple[int, int, int]]) -> str:
        return ",".join(f"rgb{c}" for c in colours)

    delta_bar = gradient([delta_colour(v, beta) for v in (-beta, -beta / 2, 0.0, beta / 2, beta)])
    weight_bar = gradient([weight_colour(alpha + f * (beta - alpha), alpha, beta) for f in (0.0, 0.5, 1.0)])
    bar = "display:inline-block;width:200px;height:12px;border:1px solid #888;vertical-align:middle"
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:monospace}td{padding:2px 4px;text-align:center}th{text-align:right}</style>"
        f"<body><h3>{html.escape(title)}</h3><table>"
        f"<tr><th>token</th>{''.join(tokens)}</tr><tr><th>logit gain</th>{''.join(deltas)}</tr>"
        f"<tr><th>CAL weight</th>{''.join(weights)}</tr></table>"
        f"<p class='legend'>logit gain: {-beta:g} "
        f"<span style='{bar};background:linear-gradient(to right,{delta_bar})'>"
        f"</span> {beta:g} (blue: the image argues against the token; white: no gain)<br>"
        f"CAL weight: {alpha:g} <span style='{bar};background:linear-gradient(to right,{weight_bar})'></span> {beta:g}"
        " (the gain clamped to [alpha, beta], then pooled)</p></body>\n"
    )
