"""The toy world's region proposer: objects found in the pixels of a toy image, matched to the noun phrases of a
prompt.

CRG needs regions for prompts that come without any; on real images an open-vocabulary detector finds them
(`vcontrast.crg.proposals`). In the toy world the objects are flat-coloured shapes on a uniform grey background, so
an exact detector takes a few lines of numpy, and "proposed boxes" come from the image alone rather than from the
scene's annotation. Registered as `"toy"` in `vcontrast.crg.proposals.PROPOSERS` on import.

How `detect_objects` reads an image:

1. Background: the most common colour of the border pixels (scenes keep `GAP` free pixels around every thing).
2. Foreground: pixels whose colour differs from it (any channel by more than `FOREGROUND_TOL`), split into
   4-connected components by a run-length union-find (no scipy). Scenes keep things apart, so one component is one
   shape, one outline, or one glyph of a rendered word.
3. Colour: each pixel is named by the nearest of `COLORS` (or white) within `COLOR_TOL`, and the component takes
   the most frequent name (shapes are flat; the antialiased edges of a glyph, blends with the background, name
   nothing); white is a region outline (`vcontrast.toy.tasks.OUTLINE`).
4. Shape: the component's mask is compared with the four ideal shapes drawn at its box size (`render` of a one-object
   scene); the best intersection over union names the shape, and a component whose best fit is below `MIN_FIT` (or
   whose box is not square: every shape has a square box) is a glyph. Glyphs of one colour merge into one text box.
5. Size: "small" or "large" by the box side relative to the image (the two ranges of `SIZES` do not overlap).

How `match_phrase` reads a phrase: its colour, shape (singular or plural) and size words select the shapes having
all of them ("the red circle" -> every red circle, "squares" -> every square); "box", "outline" or "rectangle"
without an attribute names the drawn region outlines ("the object in the box" -> `["object", "box"]` -> every shape
and the outline); "word", "number", "text", "digit" name the rendered text; any other phrase ("object", "thing")
names every shape.

Examples:

```python
>>> from vcontrast.toy.scenes import make_scene
>>> from vcontrast.crg.proposals import propose_regions
>>> image, scene = make_scene(3, n_objects=2)
>>> [(o.color, o.shape) for o in scene.objects]
[('orange', 'circle'), ('red', 'triangle')]
>>> propose_regions(image, "what is left of the orange circle ?", detector="toy")
[Proposal(box=(63.0, 46.0, 77.0, 60.0), score=1.0, phrase='orange circle')]
```
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from vcontrast.crg.proposals import Proposal, register_proposer
from vcontrast.toy.scenes import COLORS, SHAPES, SIZES, Obj, Scene, render

logger = logging.getLogger(__name__)

__all__ = ["Detection", "ToyProposer", "detect_objects", "load_toy_proposer", "match_phrase"]

Box = tuple[int, int, int, int]

FOREGROUND_TOL = 12  # max per-channel difference from the background that still counts as background
COLOR_TOL = 60.0  # max RGB distance from a palette colour (or white) to take its name
MIN_FIT = 0.8  # min IoU between a component and its best ideal shape for it to be a shape (glyphs fit worse)
WHITE = (255, 255, 255)  # the colour `vcontrast.toy.tasks.draw_region` outlines a region with
# The side that separates "small" from "large", as a fraction of the image side: between the two `SIZES` ranges.
SIZE_SPLIT = (SIZES["small"][1] + SIZES["large"][0]) / 2
OUTLINE_WORDS = frozenset({"box", "boxes", "outline", "outlines", "rectangle", "rectangles", "region", "regions"})
TEXT_WORDS = frozenset({"word", "words", "number", "numbers", "text", "digit", "digits", "letters", "writing"})


@dataclass(frozen=True)
class Detection:
    """One thing found in a toy image.

    Args:
        kind (`str`): "object" (a coloured shape), "text" (the glyphs of one colour, merged) or "outline" (a drawn
            region box).
        box (`tuple[int, int, int, int]`): xyxy pixel box, end-exclusive (the convention of `vcontrast.toy.scenes`).
        color (`str | None`): a key of `COLORS` (`None` for outlines).
        shape (`str | None`): one of `SHAPES` for objects, else `None`.
        size_word (`str | None`): "small" or "large" for objects, else `None`.
        fit (`float`): IoU of an object's pixels with its ideal shape (1.0 for an exact match); 1.0 for the others.
    """

    kind: str
    box: Box
    color: str | None = None
    shape: str | None = None
    size_word: str | None = None
    fit: float = 1.0


def _background(pixels: np.ndarray) -> np.ndarray:
    # The most common colour of the one-pixel border: scenes keep every thing `GAP` pixels away from it.
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # (4 * side, 3)
    values, counts = np.unique(border, axis=0, return_counts=True)
    return values[counts.argmax()]


def _components(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """4-connected components of a boolean (H, W) mask, as (ys, xs) pixel arrays, via row runs and union-find."""
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    runs: list[tuple[int, int, int]] = []  # (y, x_start, x_end) per run, end-exclusive
    previous: list[int] = []  # run ids of the previous row
    for y, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))  # starts, ends interleaved
        current = []
        for start, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            run = len(runs)
            runs.append((y, start, end))
            parent.append(run)
            for other in previous:  # 4-connectivity: runs above that share a column
                _, o_start, o_end = runs[other]
                if o_start < end and start < o_end:
                    a, b = find(run), find(other)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
            current.append(run)
        previous = current
    groups: dict[int, list[int]] = {}
    for run in range(len(runs)):
        groups.setdefault(find(run), []).append(run)
    out = []
    for members in groups.values():
        ys = np.concatenate([np.full(runs[r][2] - runs[r][1], runs[r][0]) for r in members])
        xs = np.concatenate([np.arange(runs[r][1], runs[r][2]) for r in members])
        out.append((ys, xs))
    return out


@lru_cache(maxsize=2048)
def _ideal_mask(shape: str, side: int) -> np.ndarray:
    # The shape exactly as the scene renderer draws it in a side x side box: what a component is compared with.
    scene = Scene(size=side, background=(0, 0, 0), objects=[Obj("red", shape, "small", (0, 0, side, side))])
    return np.asarray(render(scene)).any(axis=-1)  # (side, side)


_NAMES = (*COLORS, "white")
_PALETTE = np.array([*COLORS.values(), WHITE], dtype=float)  # (7, 3)


def _color_name(rgb: np.ndarray) -> str | None:
    """The most frequent palette name of (N, 3) pixels; pixels farther than `COLOR_TOL` from the palette abstain."""
    distance = np.linalg.norm(rgb[:, None, :].astype(float) - _PALETTE[None], axis=-1)  # (N, 7)
    nearest = distance.argmin(axis=1)  # (N,)
    votes = nearest[distance[np.arange(len(rgb)), nearest] <= COLOR_TOL]
    return _NAMES[int(np.bincount(votes).argmax())] if len(votes) else None


def _best_shape(mask: np.ndarray) -> tuple[str | None, float]:
    h, w = mask.shape
    if h != w:  # every shape's box is square; glyphs rarely are
        return None, 0.0
    fits = {}
    for shape in SHAPES:
        ideal = _ideal_mask(shape, w)
        fits[shape] = float((mask & ideal).sum() / (mask | ideal).sum())
    shape = max(fits, key=fits.get)
    return shape, fits[shape]


def detect_objects(image: Image.Image) -> list[Detection]:
    """Find the shapes, rendered text and region outlines of a toy image from its pixels.

    Args:
        image (`PIL.Image.Image`): a toy scene image (`vcontrast.toy.scenes.make_scene`), possibly with a region
            outline (`vcontrast.toy.tasks.draw_region`).

    Returns:
        `list[Detection]`: objects first, then text, then outlines, each group in reading order (top to bottom,
        then left to right). Components of no palette colour (e.g. a blacked-out region) are left out.

    Examples:

    ```python
    >>> image, scene = make_scene(0)
    >>> [(d.color, d.shape, d.box) for d in detect_objects(image)] == [  # exact on toy scenes
    ...     (o.color, o.shape, o.box) for o in sorted(scene.objects, key=lambda o: (o.box[1], o.box[0]))]
    True
    ```
    """
    pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    background = _background(pixels)
    mask = (np.abs(pixels.astype(np.int16) - background.astype(np.int16)) > FOREGROUND_TOL).any(axis=-1)  # (H, W)
    objects, outlines = [], []
    glyphs: dict[str, list[Box]] = {}
    for ys, xs in _components(mask):
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        color = _color_name(pixels[ys, xs])
        if color is None:
            continue
        if color == "white":
            outlines.append(Detection("outline", box))
            continue
        local = np.zeros((box[3] - box[1], box[2] - box[0]), dtype=bool)
        local[ys - box[1], xs - box[0]] = True
        shape, fit = _best_shape(local)
        if shape is not None and fit >= MIN_FIT:
            side = box[2] - box[0]
            size_word = "small" if side < SIZE_SPLIT * pixels.shape[1] else "large"
            objects.append(Detection("object", box, color, shape, size_word, fit))
        else:
            glyphs.setdefault(color, []).append(box)
    texts = [
        Detection("text", (min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs)),
                  color)
        for color, bs in glyphs.items()
    ]  # fmt: skip

    def order(d: Detection) -> tuple[int, int]:
        return d.box[1], d.box[0]

    return sorted(objects, key=order) + sorted(texts, key=order) + sorted(outlines, key=order)


def _phrase_words(phrase: str) -> tuple[set[str], set[str], set[str], set[str]]:
    words = re.findall(r"[a-z]+", phrase.lower())
    singular = {w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w for w in words}
    return singular & set(COLORS), singular & set(SHAPES), singular & set(SIZES), set(words)


def match_phrase(phrase: str, detections: list[Detection]) -> list[Detection]:
    """The detections a noun phrase names (see the module docstring for the rules).

    Args:
        phrase (`str`): a noun phrase such as "red circle", "the small squares", "box" or "object".
        detections (`list[Detection]`): what `detect_objects` found.

    Returns:
        `list[Detection]`: the named ones, in the order of `detections`; empty when the phrase names attributes that
        no object has.

    Examples:

    ```python
    >>> image, scene = make_scene(3, n_objects=2)
    >>> [d.shape for d in match_phrase("the orange circle", detect_objects(image))]
    ['circle']
    ```
    """
    colors, shapes, sizes, words = _phrase_words(phrase)
    objects = [d for d in detections if d.kind == "object"]
    if colors or shapes or sizes:
        return [
            d
            for d in objects
            if (not colors or d.color in colors) and (not shapes or d.shape in shapes)
            and (not sizes or d.size_word in sizes)
        ]  # fmt: skip
    for kind, names in (("outline", OUTLINE_WORDS), ("text", TEXT_WORDS)):
        found = [d for d in detections if d.kind == kind]
        if words & names and found:
            return found
    return objects


class ToyProposer:
    """The `RegionProposer` of the toy world: exact boxes from the pixels, matched to phrases (see the module
    docstring). Takes no options; registered as `"toy"`.

    Examples:

    ```python
    >>> image, scene = make_scene(3, n_objects=2)
    >>> [(p.phrase, p.box) for p in ToyProposer()(image, ["triangle", "object"])]
    [('triangle', (5.0, 32.0, 18.0, 45.0)), ('object', (63.0, 46.0, 77.0, 60.0))]
    ```
    """

    name = "toy"

    def __call__(self, image: Image.Image, phrases: list[str]) -> list[Proposal]:
        """Proposals for every phrase, in phrase order; a box named by several phrases is returned once, for the
        first. The score is the detection's shape fit (1.0 for outlines and text)."""
        if isinstance(phrases, str):
            raise ValueError(f"`phrases` (={phrases!r}) has to be a list of phrases, not one string")  # noqa: TRY004
        detections = detect_objects(image)
        out, seen = [], set()
        for phrase in phrases:
            for d in match_phrase(phrase, detections):
                if d.box not in seen:
                    seen.add(d.box)
                    out.append(Proposal(tuple(float(v) for v in d.box), round(d.fit, 4), phrase))
        return out


def load_toy_proposer(device: object = None, **kwargs) -> ToyProposer:
    """The `"toy"` factory of `vcontrast.crg.proposals.PROPOSERS`: a `ToyProposer`.

    Args:
        device (*optional*): accepted and ignored (the eval runner passes one on GPU machines; this is numpy only).
        **kwargs: none is accepted: detector options (`threshold`, `model`, ...) raise `ValueError`.
    """
    if kwargs:
        raise ValueError(f"the toy proposer takes no options, got {sorted(kwargs)}")
    return ToyProposer()


_factory = load_toy_proposer  # the name `PROPOSERS["toy"]` points to
register_proposer("toy", load_toy_proposer, overwrite=True)
