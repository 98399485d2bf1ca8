"""Pictures people look at: CRG side-by-sides and CAL token heatmaps (PNG, HTML and terminal colours).

PIL only, so the CLI and the demo draw without matplotlib; the experiment plots use matplotlib (the `plot` extra).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from vcontrast.regions import draw_boxes, to_rgb

_FONT = ImageFont.load_default()
_BOX_COLOUR = (255, 40, 40)


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = _FONT.getbbox(text)
    return right - left, bottom - top


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels of the default font."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and _text_size(trial)[0] > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def side_by_side(
    image: Image.Image,
    contrast: Image.Image,
    boxes: Sequence[Sequence[float]],
    captions: dict[str, str],
    *,
    scale: int | None = None,
    title: str | None = None,
) -> Image.Image:
    """The reference image with its regions outlined, the contrast image, and labelled texts underneath.

    Args:
        image (`PIL.Image`): the reference image.
        contrast (`PIL.Image`): the contrast image (regions blacked out), same size.
        boxes (`list[box]`): xyxy pixel boxes to outline on the reference image.
        captions (`dict[str, str]`): label -> text, e.g. {"plain": "red", "CRG": "blue"}.
        scale (`int`, *optional*): integer up-scaling (nearest) so small toy images stay readable; defaults to
            whatever brings the width of each panel to at least 256 px.
        title (`str`, *optional*): a line above the panels (the question).

    Returns:
        `PIL.Image`: RGB picture.
    """
    image, contrast = to_rgb(image), to_rgb(contrast)
    if image.size != contrast.size:
        raise ValueError(f"image size {image.size} != contrast size {contrast.size}")
    scale = scale or max(1, -(-256 // image.width))
    size = (image.width * scale, image.height * scale)
    scaled_boxes = [[v * scale for v in box] for box in boxes]
    left = image.resize(size, Image.NEAREST)
    if scaled_boxes:
        left = draw_boxes(left, scaled_boxes, color=_BOX_COLOUR, width=2)
    right = contrast.resize(size, Image.NEAREST)
    pad, gap, line_h = 8, 8, _text_size("Ag")[1] + 4
    width = 2 * size[0] + gap + 2 * pad
    title_lines = _wrap(title, width - 2 * pad) if title else []
    caption_lines = [line for label, text in captions.items() for line in _wrap(f"{label}: {text}", width - 2 * pad)]
    top = pad + line_h * len(title_lines) + (pad if title_lines else 0)
    canvas = Image.new("RGB", (width, top + size[1] + pad + line_h * len(caption_lines) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((pad, pad + i * line_h), line, fill=(0, 0, 0), font=_FONT)
    canvas.paste(left, (pad, top))
    canvas.paste(right, (pad + size[0] + gap, top))
    for i, line in enumerate(caption_lines):
        draw.text((pad, top + size[1] + pad + i * line_h), line, fill=(0, 0, 0), font=_FONT)
    return canvas


def _weight_colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    """White at `low`, saturated orange-red at `high`; values below `low` (negative deltas) turn blue."""
    if value < low:
        t = min(1.0, (low - value) / max(high - low, 1e-6))
        return (int(255 * (1 - 0.6 * t)), int(255 * (1 - 0.4 * t)), 255)
    t = min(1.0, (value - low) / max(high - low, 1e-6))
    return (255, int(255 * (1 - 0.65 * t)), int(255 * (1 - 0.9 * t)))


def _check_tokens(tokens: Sequence[str], values: Sequence[float]) -> None:
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values")


_PAD = 8


def _wrap_tokens(
    labels: Sequence[str], width: int, line_h: int, top: int, gap: int = 2
) -> tuple[list[tuple[int, int, int, str]], int]:
    # Lay labels out left to right, wrapping at `width`: ([(x, y, box width, label)], y of the last line).
    placed, x, y = [], _PAD, top
    for label in labels:
        w = _text_size(label)[0] + 6
        if x + w > width - _PAD and x > _PAD:
            x, y = _PAD, y + line_h
        placed.append((x, y, w, label))
        x += w + gap
    return placed, y


def _canvas(width: int, height: int, image: Image.Image | None) -> tuple[Image.Image, int]:
    # A white canvas `width` wide plus, on the left, `image` scaled (nearest) to its height (at least 128 px):
    # (canvas, x offset of the area right of the image).
    thumb = None
    if image is not None:
        side = max(height, 128)
        thumb = to_rgb(image).resize((max(1, side * image.width // image.height), side), Image.NEAREST)
    offset = thumb.width + _PAD if thumb else 0
    canvas = Image.new("RGB", (width + offset, max(height, thumb.height if thumb else 0)), (255, 255, 255))
    if thumb:
        canvas.paste(thumb, (0, 0))
    return canvas, offset


def token_heatmap(
    tokens: Sequence[str],
    values: Sequence[float],
    *,
    low: float = 1.0,
    high: float = 5.0,
    width: int = 480,
    title: str | None = None,
    image: Image.Image | None = None,
) -> Image.Image:
    """Tokens laid out as text, each on a background coloured by its value (the CAL paper's Figure 2a).

    Args:
        tokens (`list[str]`): the label tokens, in order.
        values (`list[float]`): one value per token (CAL weight, or raw delta).
        low, high (`float`): the colour scale's ends (CAL's clamp range by default); below `low` is blue.
        width (`int`): text width in pixels before wrapping.
        title (`str`, *optional*): a line above the tokens.
        image (`PIL.Image`, *optional*): shown on the left, scaled (nearest) to the text block's height, at least
            128 px.
    """
    _check_tokens(tokens, values)
    pad, line_h = 8, _text_size("Ag")[1] + 8
    placed, bottom = _wrap_tokens(tokens, width, line_h, top=pad + (line_h if title else 0))
    canvas, offset = _canvas(width, bottom + line_h + pad, image)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((offset + pad, pad), title, fill=(0, 0, 0), font=_FONT)
    for (x, y, w, tok), value in zip(placed, values, strict=True):
        draw.rectangle([offset + x, y - 2, offset + x + w, y + line_h - 6], fill=_weight_colour(value, low, high))
        draw.text((offset + x + 3, y), tok, fill=(0, 0, 0), font=_FONT)
    return canvas


def token_heatmap_html(
    tokens: Sequence[str], values: Sequence[float], *, low: float = 1.0, high: float = 5.0, title: str = ""
) -> str:
    """A standalone HTML page of the tokens on coloured backgrounds, with each value in a tooltip."""
    _check_tokens(tokens, values)
    spans = []
    for tok, value in zip(tokens, values, strict=True):
        r, g, b = _weight_colour(value, low, high)
        spans.append(
            f'<span title="{value:.3f}" style="background:rgb({r},{g},{b});padding:2px 3px;margin:1px;'
            f'border-radius:3px">{html.escape(tok)}</span>'
        )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<body style='font-family:monospace;line-height:2'><h3>{html.escape(title)}</h3>{' '.join(spans)}</body>\n"
    )


def token_heatmap_ansi(tokens: Sequence[str], values: Sequence[float], *, low: float = 1.0, high: float = 5.0) -> str:
    """The tokens with 24-bit ANSI background colours, for a terminal."""
    _check_tokens(tokens, values)
    parts = []
    for tok, value in zip(tokens, values, strict=True):
        r, g, b = _weight_colour(value, low, high)
        parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{tok}\x1b[0m")
    return " ".join(parts)
