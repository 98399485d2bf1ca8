"""Procedural scenes for the toy world: 1-4 coloured shapes, and optionally one rendered word or digit, on grey.

A scene is a pure function of its seed (a `numpy.random.Generator` seeded with it draws everything), so the same
seed gives the same PNG bytes. Every box is `(x0, y0, x1, y1)` in integer pixels with an exclusive end, the
convention of `PIL.Image.getbbox`: the thing covers columns `x0 .. x1 - 1`. Boxes are tight (each shape fills its
box edge to edge; a text box is cropped to its inked pixels) and any two boxes keep `GAP` free pixels between them
and from the border, so a region outline drawn around one box never touches another thing. Positions are drawn
uniformly among the free ones; when the sizes drawn leave no room (rare: four large shapes and a word in a small
image), the attributes and sizes are drawn again.

None of the colours is black: black (0, 0, 0) is what CRG paints over a region, so a blacked-out region can never
be mistaken for an object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Side length of a shape's (square) box as a fraction of the image side, drawn uniformly in the range.
SIZES: dict[str, tuple[float, float]] = {"small": (0.12, 0.17), "large": (0.23, 0.29)}
# What a text item can say: short words and single digits (OCR-like questions).
TEXTS: tuple[str, ...] = ("cat", "dog", "sun", "car", "hat", "cup", "pen", "map", *"0123456789")
TEXT_SIZE = (0.2, 0.26)  # font size as a fraction of the image side
BACKGROUND = (150, 200)  # grey level range of the background
GAP = 4  # free pixels between any two boxes and between a box and the border
IMAGE_SIZE = (64, 96)  # default image side range (inclusive)
LAYOUT_TRIES = 5  # layouts tried for one draw of sizes before drawing new attributes and sizes (rarely needed)
MAX_DRAWS = 50


@dataclass(frozen=True)
class Obj:
    """One coloured shape.

    Args:
        color (`str`): a key of `COLORS`.
        shape (`str`): one of `SHAPES`.
        size_word (`str`): a key of `SIZES` ("small" or "large").
        box (`tuple[int, int, int, int]`): tight xyxy pixel box, end-exclusive.
    """

    color: str
    shape: str
    size_word: str
    box: Box

    @property
    def center(self) -> tuple[float, float]:
        """The box centre `(x, y)` in pixels."""
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class TextItem:
    """One rendered word or digit (PIL's built-in font).

    Args:
        text (`str`): one of `TEXTS`.
        color (`str`): a key of `COLORS`.
        font_size (`int`): font size in pixels.
        box (`tuple[int, int, int, int]`): xyxy box of the inked pixels, end-exclusive.
    """

    text: str
    color: str
    font_size: int
    box: Box

    @property
    def center(self) -> tuple[float, float]:
        """The box centre `(x, y)` in pixels."""
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    """The ground truth of one toy image.

    Args:
        size (`int`): image side in pixels (images are square).
        background (`tuple[int, int, int]`): background RGB.
        objects (`list[Obj]`): the shapes, in generation order.
        texts (`list[TextItem]`): rendered words or digits (empty unless `with_text`).
    """

    size: int
    background: tuple[int, int, int]
    objects: list[Obj] = field(default_factory=list)
    texts: list[TextItem] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict (what the toy tasks store in `Item.meta["scene"]`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Inverse of `to_dict` (lists become tuples again)."""
        return cls(
            size=data["size"],
            background=tuple(data["background"]),
            objects=[Obj(**{**o, "box": tuple(o["box"])}) for o in data["objects"]],
            texts=[TextItem(**{**t, "box": tuple(t["box"])}) for t in data["texts"]],
        )


@lru_cache(maxsize=4096)
def _shape_mask(shape: str, w: int, h: int) -> Image.Image:
    # Cached: there are only a few hundred (shape, w, h) combinations and masks are never modified.
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    r, b = w - 1, h - 1  # PIL's draw coordinates are inclusive
    if shape == "circle":
        draw.ellipse((0, 0, r, b), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, r, b), fill=255)
    elif shape == "triangle":
        draw.polygon([(0, b), (r, b), (r / 2, 0)], fill=255)
    elif shape == "diamond":
        draw.polygon([(r / 2, 0), (r, b / 2), (r / 2, b), (0, b / 2)], fill=255)
    else:
        raise ValueError(f"`shape` (={shape!r}) must be one of {SHAPES}")
    return mask


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=4096)
def _text_mask(text: str, font_size: int) -> Image.Image:
    # Antialiased glyphs, cropped to the inked pixels so the text box is tight.
    font = _font(font_size)
    mask = Image.new("L", (font_size * (len(text) + 2), font_size * 2), 0)
    ImageDraw.Draw(mask).text((font_size // 2, font_size // 2), text, font=font, fill=255)
    return mask.crop(mask.getbbox())


def _mask(thing: Obj | TextItem) -> Image.Image:
    if isinstance(thing, Obj):
        x0, y0, x1, y1 = thing.box
        return _shape_mask(thing.shape, x1 - x0, y1 - y0)
    return _text_mask(thing.text, thing.font_size)


def render(scene: Scene) -> Image.Image:
    """Draw a scene.

    Args:
        scene (`Scene`): what to draw; render a copy with fewer things to see one thing alone.

    Returns:
        `PIL.Image.Image`: an RGB image of `scene.size` x `scene.size` pixels.

    Examples:

    ```python
    >>> image, scene = make_scene(0)
    >>> render(scene).tobytes() == image.tobytes()
    True
    ```
    """
    image = Image.new("RGB", (scene.size, scene.size), tuple(scene.background))
    for thing in [*scene.objects, *scene.texts]:
        image.paste(COLORS[thing.color], thing.box, _mask(thing))
    return image


def _place(rng: np.random.Generator, size: int, dims: list[tuple[int, int]]) -> list[Box] | None:
    # Put things one by one (largest first, it packs better) at a position drawn uniformly from all top-left corners
    # that keep GAP pixels from the border and from every placed box; if a thing finds no room at all, restart.
    order = sorted(range(len(dims)), key=lambda i: -dims[i][0] * dims[i][1])
    for _ in range(LAYOUT_TRIES):
        boxes: dict[int, Box] = {}
        for i in order:
            w, h = dims[i]
            free = np.ones((size - 2 * GAP - h + 1, size - 2 * GAP - w + 1), dtype=bool)  # (y, x) corner - GAP
            for x0, y0, x1, y1 in boxes.values():  # corners whose box would come within GAP of this one
                free[max(y0 - 2 * GAP - h + 1, 0) : y1, max(x0 - 2 * GAP - w + 1, 0) : x1] = False
            ys, xs = np.nonzero(free)
            if len(ys) == 0:
                break
            k = int(rng.integers(len(ys)))
            x, y = int(xs[k]) + GAP, int(ys[k]) + GAP
            boxes[i] = (x, y, x + w, y + h)
        if len(boxes) == len(dims):
            return [boxes[i] for i in range(len(dims))]
    return None


def _draw(rng: np.random.Generator, size: int, n_objects: int, with_text: bool, bias) -> Scene | None:
    # Attributes first, then a layout for their sizes (None if the sizes drawn do not fit).
    grey = int(rng.integers(BACKGROUND[0], BACKGROUND[1] + 1))
    specs = []  # (color, shape, size_word, side)
    for _ in range(n_objects):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size_word = list(SIZES)[int(rng.integers(len(SIZES)))]
        side = round(size * rng.uniform(*SIZES[size_word]))
        specs.append((_color(rng, shape, bias), shape, size_word, side))
    dims = [(side, side) for *_, side in specs]
    if with_text:
        text = TEXTS[int(rng.integers(len(TEXTS)))]
        text_color = list(COLORS)[int(rng.integers(len(COLORS)))]
        font_size = round(size * rng.uniform(*TEXT_SIZE))
        dims.append(_text_mask(text, font_size).size)
    boxes = _place(rng, size, dims)
    if boxes is None:
        return None
    scene = Scene(size=size, background=(grey, grey, grey))
    scene.objects = [Obj(c, s, w, box) for (c, s, w, _), box in zip(specs, boxes[:n_objects], strict=True)]
    if with_text:
        scene.texts = [TextItem(text, text_color, font_size, boxes[-1])]
    return scene


def _color(rng: np.random.Generator, shape: str, bias: dict[str, tuple[str, float]] | None) -> str:
    names = list(COLORS)
    if bias and shape in bias:
        favoured, p = bias[shape]
        if rng.random() < p:
            return favoured
        others = [c for c in names if c != favoured]
        return others[int(rng.integers(len(others)))]
    return names[int(rng.integers(len(names)))]


def _check_bias(bias: dict[str, tuple[str, float]] | None) -> None:
    for shape, (color, p) in (bias or {}).items():
        if shape not in SHAPES or color not in COLORS or not 0 <= p <= 1:
            raise ValueError(f"`bias` entry {shape!r}: {(color, p)!r} needs a shape, a colour and 0 <= p <= 1")


def make_scene(
    seed: int,
    *,
    n_objects: int | None = None,
    size: int | None = None,
    with_text: bool = False,
    bias: dict[str, tuple[str, float]] | None = None,
) -> tuple[Image.Image, Scene]:
    """Generate one scene and its image, deterministically from `seed`.

    Args:
        seed (`int`): seeds the `numpy.random.Generator` that draws everything.
        n_objects (`int`, *optional*): number of shapes, 1-4; drawn uniformly from 1-4 when `None`.
        size (`int`, *optional*): image side in pixels, 48-256; drawn uniformly from 64-96 when `None`.
        with_text (`bool`, *optional*, defaults to `False`): add one rendered word or digit from `TEXTS`.
        bias (`dict[str, tuple[str, float]]`, *optional*): shape -> (colour, p): a shape of that kind gets that
            colour with probability p and one of the other colours uniformly otherwise, e.g.
            `{"circle": ("red", 0.8)}` (see `vcontrast.toy.tasks.BIASES`). Without it colours are uniform.

    Returns:
        `tuple[PIL.Image.Image, Scene]`: the RGB image and its ground truth.

    Examples:

    ```python
    >>> image, scene = make_scene(3, n_objects=2)
    >>> len(scene.objects), image.size == (scene.size, scene.size)
    (2, True)
    ```
    """
    if n_objects is not None and not 1 <= n_objects <= 4:
        raise ValueError(f"`n_objects` (={n_objects}) must be between 1 and 4")
    if size is not None and not 48 <= size <= 256:
        raise ValueError(f"`size` (={size}) must be between 48 and 256")
    _check_bias(bias)
    rng = np.random.default_rng(seed)
    size = size or int(rng.integers(IMAGE_SIZE[0], IMAGE_SIZE[1] + 1))
    n_objects = n_objects or int(rng.integers(1, 5))
    for _ in range(MAX_DRAWS):
        scene = _draw(rng, size, n_objects, with_text, bias)
        if scene is not None:
            return render(scene), scene
    raise ValueError(f"could not lay out {n_objects} objects in a {size}px image in {MAX_DRAWS} draws")
