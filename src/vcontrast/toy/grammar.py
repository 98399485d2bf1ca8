"""The toy world's language: every caption, question and answer template, the tokeniser and the closed vocabulary.

All text is lower case, with punctuation as separate space-delimited tokens, so `words(text)` is a plain regex split
and `vocabulary()` lists every token any template can emit (the toy tokenizer is built from it).

Grammar (things are ordered in reading order: by 3x3 grid row, then column, then x):

    caption      := phrase " ." | phrase (" , " phrase)* " and " phrase " ."
    phrase       := article " " size " " color " " shape " " where | ("the word " | "the number ") text " " where
    where        := "at the top left" | "at the top" | "at the top right" | "on the left" | "in the middle"
                  | "on the right" | "at the bottom left" | "at the bottom" | "at the bottom right"
    objects      := item | item (" , " item)* " and " item     (left to right by centre x; no size, no location)
    item         := article " " color " " shape
    article      := "a" | "an" (before a vowel: "an orange circle", "a large orange circle")
    spatial      := name " is " relation " " name        e.g. "the red circle is left of the blue square"
    name         := "the " [size " "] [color " "] shape   (the shortest unique one; spatial texts use color + shape)
    relname      := "the " shape " " relation " " name     e.g. "the circle left of the square" (relational refexp)
    relations    := spatial (" , " spatial)* [" and " spatial] " ."   every related pair, in reading order

Questions are in `PROMPTS`; open answers are a colour, shape, size word, digit, text, `where` phrase, "yes" or "no".
Short texts (objects, spatial, names) have no final period; captions and prompts end with " ." or " ?".
"""

from __future__ import annotations

import re
from dataclasses import replace
from string import Formatter

import numpy as np

from .scenes import COLORS, SHAPES, SIZES, TEXTS, Obj, Scene, TextItem

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the middle", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
PROMPTS: dict[str, str] = {
    "caption": "describe the image .",
    "objects": "what objects are in the image ?",
    "color": "what color is the {shape} ?",
    "shape": "what shape is the {color} object ?",
    "count": "how many objects are there ?",
    "text": "what is written in the image ?",
    "where": "where is {name} ?",
    "region_color": "what color is the object in the box ?",
    "region_shape": "what shape is the object in the box ?",
    "region_size": "is the object in the box small or large ?",
    "region_caption": "describe the object in the box .",
    "relations": "how are the objects placed ?",
    "refer": "name one object in the image .",
    "spatial": "where is {a} relative to {b} ?",
    "match": "does this image match : {text} ?",
}
ANSWERS = ("yes", "no")
_GLUE = ("a", "an", "and", ",", ".", "the", "the word", "the number", "is")  # words the templates add between slots
_TOKEN = re.compile(r"[a-z]+|\d|[^\sa-z\d]")


def words(text: str) -> list[str]:
    """Split text into the toy world's tokens: lower-case letter runs, single digits and single punctuation marks.

    Examples:

    ```python
    >>> words("What color is the circle? 42")
    ['what', 'color', 'is', 'the', 'circle', '?', '4', '2']
    ```
    """
    return _TOKEN.findall(text.lower())


def vocabulary() -> list[str]:
    """Every token that any toy caption, prompt, candidate or answer can contain, sorted.

    Examples:

    ```python
    >>> {"circle", "left", "?", "7"} <= set(vocabulary())
    True
    ```
    """
    literal = [part for p in PROMPTS.values() for part, *_ in Formatter().parse(p)]
    places = [w for row in POSITIONS for w in row]
    pieces = [*literal, *places, *RELATIONS, *COLORS, *SHAPES, *SIZES, *TEXTS, *"0123456789", *ANSWERS, *_GLUE]
    return sorted({w for piece in pieces for w in words(piece)})


def position(thing: Obj | TextItem, size: int) -> str:
    """The 3x3-grid location phrase of a thing's centre, e.g. "at the top left"."""
    x, y = thing.center
    return POSITIONS[min(int(3 * y / size), 2)][min(int(3 * x / size), 2)]


def _reading_order(things: list, size: int) -> list:
    def key(t):
        x, y = t.center
        return min(int(3 * y / size), 2), min(int(3 * x / size), 2), x, y

    return sorted(things, key=key)


def _phrase(thing: Obj | TextItem, size: int) -> str:
    if isinstance(thing, TextItem):
        kind = "the number" if thing.text.isdigit() else "the word"
        return f"{kind} {thing.text} {position(thing, size)}"
    return f"{_a(thing.size_word)} {thing.color} {thing.shape} {position(thing, size)}"


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene) -> str:
    """The canonical caption of a scene: every thing with its attributes and location, in reading order.

    Examples:

    ```python
    >>> from vcontrast.toy.scenes import make_scene
    >>> caption(make_scene(3, n_objects=2)[1])
    'a small red triangle on the left and a small orange circle on the right .'
    ```
    """
    things = _reading_order([*scene.objects, *scene.texts], scene.size)
    return _join([_phrase(t, scene.size) for t in things]) + " ."


def objects_text(objects: list[Obj]) -> str:
    """Colour and shape of each object, left to right, e.g. "a red circle and a blue square" (no final period)."""
    ordered = sorted(objects, key=lambda o: o.center)
    return _join([_a(f"{o.color} {o.shape}") for o in ordered])


def name(obj: Obj, objects: list[Obj], *, min_level: int = 0) -> str | None:
    """The shortest unique name of `obj` among `objects` ("the circle", "the red circle", "the small red circle").

    Args:
        obj (`Obj`): the object to name.
        objects (`list[Obj]`): every object of its scene (including `obj`).
        min_level (`int`, *optional*, defaults to 0): 0 may name by shape alone, 1 starts at colour + shape.

    Returns:
        `str | None`: the name, or `None` if no name is unique (an identical twin exists).
    """
    keys = (lambda o: (o.shape,), lambda o: (o.color, o.shape), lambda o: (o.size_word, o.color, o.shape))
    for key in keys[min_level:]:
        if sum(key(o) == key(obj) for o in objects) == 1:
            return "the " + " ".join(key(obj))
    return None


def relation(a: Obj, b: Obj) -> str | None:
    """The unambiguous relation of `a` to `b`, or `None` when there is none.

    "left of" means `a` ends left of where `b` starts and their rows overlap (so "above"/"below" are false); the
    other three likewise. Diagonal pairs have no relation, so exactly one of the four captions of a What'sUp-style
    item is true.
    """
    rows = a.box[1] < b.box[3] and b.box[1] < a.box[3]
    cols = a.box[0] < b.box[2] and b.box[0] < a.box[2]
    if rows and a.box[2] <= b.box[0]:
        return "left of"
    if rows and b.box[2] <= a.box[0]:
        return "right of"
    if cols and a.box[3] <= b.box[1]:
        return "above"
    if cols and b.box[3] <= a.box[1]:
        return "below"
    return None


def spatial_text(a: Obj, rel: str, b: Obj, objects: list[Obj]) -> str:
    """E.g. "the red circle is left of the blue square"; names use colour + shape at least."""
    return f"{name(a, objects, min_level=1)} is {rel} {name(b, objects, min_level=1)}"


def spatial_pairs(objects: list[Obj]) -> list[tuple[Obj, str, Obj]]:
    """All ordered pairs `(a, relation, b)` with a clean relation and colour + shape names unique in the scene."""
    named = [o for o in objects if name(o, objects, min_level=1) is not None]
    return [(a, r, b) for a in named for b in named if a is not b and (r := relation(a, b)) is not None]


def corrupt(objects: list[Obj], kind: str, rng: np.random.Generator) -> tuple[list[Obj], list[Obj]] | None:
    """A SugarCrepe-style hard negative: change the objects so that `objects_text` becomes false.

    Args:
        objects (`list[Obj]`): the true objects.
        kind (`str`): "swap_color" (two objects of different colour and shape trade colours), "replace_color" or
            "replace_shape" (one object gets an attribute value it does not have).
        rng (`numpy.random.Generator`): picks the objects and the new value.

    Returns:
        `tuple[list[Obj], list[Obj]] | None`: the corrupted object list and the true objects it changed (their
        boxes are the regions the negative is about), or `None` if this scene allows no such negative.
    """
    if kind == "swap_color":
        pairs = [(i, j) for i, a in enumerate(objects) for j, b in enumerate(objects)
                 if i < j and a.color != b.color and a.shape != b.shape]  # fmt: skip
        if not pairs:
            return None
        i, j = pairs[int(rng.integers(len(pairs)))]
        new = list(objects)
        new[i], new[j] = replace(objects[i], color=objects[j].color), replace(objects[j], color=objects[i].color)
        return new, [objects[i], objects[j]]
    if kind in ("replace_color", "replace_shape"):
        i = int(rng.integers(len(objects)))
        o = objects[i]
        field, values = ("color", list(COLORS)) if kind == "replace_color" else ("shape", list(SHAPES))
        values = [v for v in values if v != getattr(o, field)]
        value = values[int(rng.integers(len(values)))]
        new = list(objects)
        new[i] = replace(o, **{field: value})
        return new, [o]
    raise ValueError(f"`kind` (={kind!r}) must be 'swap_color', 'replace_color' or 'replace_shape'")


def relational_name(obj: Obj, objects: list[Obj]) -> str | None:
    """A relational referring expression for `obj`: "the circle left of the square" (RefCOCO's "the X left of Y").

    The anchor is another object with a unique name; the expression is kept only if `obj` is the one object of its
    shape in that relation to the anchor, so it names `obj` and nothing else. The anchor with the shortest name
    wins, then the first in `RELATIONS` order.

    Returns:
        `str | None`: the expression, or `None` if no anchor and relation single `obj` out.
    """
    options = []
    for anchor in objects:
        anchor_name = name(anchor, objects)
        if anchor is obj or anchor_name is None or (rel := relation(obj, anchor)) is None:
            continue
        same = [o for o in objects if o is not anchor and o.shape == obj.shape and relation(o, anchor) == rel]
        if same == [obj]:
            options.append((len(words(anchor_name)), RELATIONS.index(rel), f"the {obj.shape} {rel} {anchor_name}"))
    return min(options)[2] if options else None


def object_phrase(obj: Obj) -> str:
    """Size, colour and shape with an article, e.g. "a small red circle" (the region-caption answer)."""
    return _a(f"{obj.size_word} {obj.color} {obj.shape}")


def relations_text(objects: list[Obj], size: int) -> str | None:
    """Every related pair, each once, in reading order: "the red circle is left of the blue square ." (or None).

    A pair `(a, b)` is written with `a` the earlier of the two in reading order; pairs with no clean relation
    (diagonal) or without unique colour + shape names are left out.
    """
    order = _reading_order(list(objects), size)
    pairs = [(a, r, b) for a, r, b in spatial_pairs(objects) if order.index(a) < order.index(b)]
    pairs.sort(key=lambda p: (order.index(p[0]), order.index(p[2])))
    if not pairs:
        return None
    return _join([spatial_text(a, r, b, objects) for a, r, b in pairs]) + " ."
