"""Known-truth tasks built from toy scenes, written as the same `Item` JSONL that the real-benchmark loaders produce.

Tasks (`TASK_NAMES`: toy name -> `Item.task`), templates in `vcontrast.toy.grammar`:

- "caption" -> "caption": "describe the image ." -> the canonical caption.
- "vqa" -> "vqa": colour ("what color is the circle ?", shape unique), shape ("what shape is the red object ?",
  colour unique), count ("how many objects are there ?", 1-4) or text ("what is written in the image ?").
- "region_vqa" -> "region_vqa" (ViP-Bench style): a white box is drawn around one object; "what color / shape is the
  object in the box ?" or "is the object in the box small or large ?". `regions` holds the drawn box.
- "region_caption" -> "region_vqa": "describe the object in the box ." -> "a small red circle".
- "spatial" -> "choice" (What'sUp style): "where is the red circle relative to the blue square ?" with the four
  candidates "the red circle is {left of, right of, above, below} the blue square" in `RELATIONS` order; 2-4
  objects. Two easier forms make the training curriculum: "spatial_lr" (2 objects, left of / right of, balanced in
  every split) and "spatial_pair" (2 objects, the four relations).
- "where" -> "vqa": "where is the red circle ?" or, relationally, "where is the circle left of the square ?" ->
  the object's 3x3-grid location phrase ("at the top left").
- "refer" -> "caption": "name one object in the image ." -> a referring expression of one object, intrinsic or
  relational (the in-distribution form in which "refexp" expressions are scored).
- "relations" -> "caption": "how are the objects placed ?" -> every related pair ("the red circle is left of the
  blue square ."), see `vcontrast.toy.grammar.relations_text`.
- "swap" -> "choice" (SugarCrepe style): "what objects are in the image ?" with the true `objects_text` and a hard
  negative (two objects swap colours, or one object gets another colour or shape), in random order.
- "refexp" -> "refexp" (RefCOCO style): the prompt is, half the time each, the object's shortest unique name ("the
  red circle", `meta["kind"]` "intrinsic") or a relational expression ("the circle left of the square",
  "relational"); `proposals` are all object boxes in random order, `answer` indexes the referred one, `target` is
  its box.
- "match" -> "match" (SeeTRUE style): the prompt is an objects text or a spatial text, `label` 1 if it is true;
  negatives by attribute swap/replacement or by the opposite relation.

`regions` holds the boxes of the objects an answer depends on (what CRG blacks out); it never depends on the label
or the gold candidate. `meta` holds the split, the task kind, the scene's ground truth (`Scene.to_dict`) and seed,
the names of the biases that shaped the item (`biases`) and, where a train bias favours one answer, that answer
(`prior`), so one can score the prior-consistent and prior-inconsistent halves of a test set separately.

Biases (`BIASES`), in the train split only; test splits draw every answer uniformly, so a model that leans on these
language priors loses accuracy on test:

- "shape_color": 80% of circles are red and 70% of squares are blue (other colours uniform); the colours of the other
  shapes are uniform. It shapes every train scene, hence "what color is the circle ?" (prior "red"), "what shape is
  the red object ?" (prior "circle") and the swap/match negatives, which in train are often implausible colourings.
- "relation": the gold relation of train "spatial" items is "left of" 55% of the time (15% each for the others).

"match" items are balanced (half true) in every split, with hard negatives: the first toy model, trained on 60% true
items, learnt to say "yes" and matched at chance.

Everything else is uniform in both splits: the number of objects, sizes, positions, texts, the gold index of "swap"
items and the order of "refexp" proposals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..bench.items import Item, write_items
from .grammar import (
    OPPOSITE,
    PROMPTS,
    RELATIONS,
    caption,
    corrupt,
    name,
    object_phrase,
    objects_text,
    position,
    relational_name,
    relations_text,
    spatial_pairs,
    spatial_text,
)
from .scenes import COLORS, SHAPES, SIZES, TEXTS, Box, Scene, make_scene

TASK_NAMES: dict[str, str] = {
    "caption": "caption",
    "vqa": "vqa",
    "region_vqa": "region_vqa",
    "region_caption": "region_vqa",
    "spatial": "choice",
    "spatial_lr": "choice",
    "spatial_pair": "choice",
    "where": "vqa",
    "refer": "caption",
    "relations": "caption",
    "swap": "choice",
    "refexp": "refexp",
    "match": "match",
}
SPLITS = ("train", "test", "val")  # "val" is balanced like "test", with other scenes: gates and tuning read it
BIASES: dict = {
    "shape_color": {"circle": ("red", 0.8), "square": ("blue", 0.7)},
    "relation": {"left of": 0.55, "right of": 0.15, "above": 0.15, "below": 0.15},
}
CORRUPTIONS = ("swap_color", "replace_color", "replace_shape")
OUTLINE = (255, 255, 255)  # region-prompt box colour: not a shape colour, not the black CRG fill
PAD = 3  # the outline sits 2-3 px outside the object's box (scenes keep 4 px between boxes, so it touches nothing)
MAX_SCENES = 1000  # scenes tried per item before giving up (a bug, not bad luck: most tasks need a handful)


def _pick(rng: np.random.Generator, options: list, weights: list[float] | None = None):
    if not options:
        return None
    if weights is None:
        return options[int(rng.integers(len(options)))]
    return options[int(rng.choice(len(options), p=np.array(weights) / sum(weights)))]


def _target(rng: np.random.Generator, split: str, options: list, train_weights: dict | None = None):
    # The answer an item must have: uniform in test and val, the biased distribution in train where there is one,
    # else None (train keeps whatever the biased scenes give).
    if split != "train":
        return _pick(rng, list(options))
    if train_weights is not None:
        return _pick(rng, list(train_weights), list(train_weights.values()))
    return None


def _search(rng: np.random.Generator, split: str, find: Callable[[Scene], object], n=(1, 4), with_text=False):
    # Rejection sampling over scenes: the first scene for which `find` returns something.
    bias = BIASES["shape_color"] if split == "train" else None
    for _ in range(MAX_SCENES):
        seed = int(rng.integers(2**62))
        image, scene = make_scene(seed, n_objects=int(rng.integers(n[0], n[1] + 1)), with_text=with_text, bias=bias)
        found = find(scene)
        if found is not None:
            return image, scene, seed, found
    raise RuntimeError(f"no scene out of {MAX_SCENES} fits this item; the task's constraints are too tight")


def _unique(objects: list, attr: str) -> list:
    return [o for o in objects if sum(getattr(p, attr) == getattr(o, attr) for p in objects) == 1]


def _caption(rng, split):
    with_text = bool(rng.random() < 0.3)
    image, scene, seed, _ = _search(rng, split, lambda s: True, with_text=with_text)
    regions = [t.box for t in [*scene.objects, *scene.texts]]
    return image, scene, seed, {"prompt": PROMPTS["caption"], "answer": caption(scene), "regions": regions, "meta": {}}


def _vqa(rng, split):
    kind = _pick(rng, ["color", "shape", "count", "text"])
    if kind == "count":
        n = _target(rng, split, [1, 2, 3, 4])
        image, scene, seed, _ = _search(rng, split, lambda s: True, n=(n, n) if n else (1, 4))
        regions = [o.box for o in scene.objects]
        fields = {"prompt": PROMPTS["count"], "answer": str(len(scene.objects)), "regions": regions}
        return image, scene, seed, {**fields, "meta": {"kind": kind}}
    if kind == "text":
        target = _target(rng, split, list(TEXTS))
        image, scene, seed, t = _search(
            rng, split, lambda s: _pick(rng, [t for t in s.texts if target in (None, t.text)]), with_text=True
        )
        fields = {"prompt": PROMPTS["text"], "answer": t.text, "regions": [t.box]}
        return image, scene, seed, {**fields, "meta": {"kind": kind}}
    # colour or shape: ask about the one object with a unique value of the other attribute
    asked, by = ("color", "shape") if kind == "color" else ("shape", "color")
    target = _target(rng, split, list(COLORS) if asked == "color" else list(SHAPES))

    def find(s):
        return _pick(rng, [o for o in _unique(s.objects, by) if target in (None, getattr(o, asked))])

    image, scene, seed, obj = _search(rng, split, find)
    favoured = {shape: color for shape, (color, _) in BIASES["shape_color"].items()}
    prior = favoured.get(obj.shape) if asked == "color" else {c: s for s, c in favoured.items()}.get(obj.color)
    prompt = PROMPTS[kind].format(shape=obj.shape, color=obj.color)
    meta = {"kind": kind} | ({"prior": prior} if prior else {})
    return image, scene, seed, {"prompt": prompt, "answer": getattr(obj, asked), "regions": [obj.box], "meta": meta}


def draw_region(image: Image.Image, box: Box) -> tuple[Image.Image, Box]:
    """Draw a ViP-Bench-style visual prompt: a 2-px white rectangle just outside `box`.

    Args:
        image (`PIL.Image.Image`): the scene image (not modified).
        box (`tuple[int, int, int, int]`): an object's xyxy box.

    Returns:
        `tuple[PIL.Image.Image, tuple[int, int, int, int]]`: a copy with the rectangle, and the rectangle's outer box
        (the region CRG blacks out: object and outline).
    """
    x0, y0, x1, y1 = box
    region = (x0 - PAD, y0 - PAD, x1 + PAD, y1 + PAD)
    if region[0] < 0 or region[1] < 0 or region[2] > image.width or region[3] > image.height:
        raise ValueError(f"`box` (={box}) is too close to the border of a {image.size} image for an outline")
    image = image.copy()
    ImageDraw.Draw(image).rectangle((region[0], region[1], region[2] - 1, region[3] - 1), outline=OUTLINE, width=2)
    return image, region


def _region_vqa(rng, split):
    kind = _pick(rng, ["color", "shape", "size"])
    attr = {"color": "color", "shape": "shape", "size": "size_word"}[kind]
    target = _target(rng, split, list({"color": COLORS, "shape": SHAPES, "size": SIZES}[kind]))
    find = lambda s: _pick(rng, [o for o in s.objects if target in (None, getattr(o, attr))])  # noqa: E731
    image, scene, seed, obj = _search(rng, split, find, n=(2, 4))
    image, region = draw_region(image, obj.box)
    fields = {"prompt": PROMPTS["region_" + kind], "answer": getattr(obj, attr), "regions": [region]}
    return image, scene, seed, {**fields, "meta": {"kind": kind}}


def _spatial(rng, split, n=(2, 4), relations=RELATIONS, weights=BIASES["relation"]):
    target = _target(rng, split, list(relations), weights)
    image, scene, seed, (a, rel, b) = _search(
        rng, split, lambda s: _pick(rng, [p for p in spatial_pairs(s.objects) if p[1] == target]), n=n
    )
    objs = scene.objects
    prompt = PROMPTS["spatial"].format(a=name(a, objs, min_level=1), b=name(b, objs, min_level=1))
    candidates = [spatial_text(a, r, b, objs) for r in RELATIONS]
    meta = {"kind": "relation", "relation": rel, "prior": RELATIONS.index("left of")}
    fields = {"prompt": prompt, "candidates": candidates, "answer": RELATIONS.index(rel), "regions": [a.box, b.box]}
    return image, scene, seed, {**fields, "meta": meta}


def _swap(rng, split):
    kind = _pick(rng, list(CORRUPTIONS))
    image, scene, seed, (wrong, changed) = _search(rng, split, lambda s: corrupt(s.objects, kind, rng), n=(2, 3))
    gold = int(rng.integers(2))
    true, false = objects_text(scene.objects), objects_text(wrong)
    candidates = [true, false] if gold == 0 else [false, true]
    fields = {
        "prompt": PROMPTS["objects"],
        "candidates": candidates,
        "answer": gold,
        "regions": [o.box for o in changed],
    }
    return image, scene, seed, {**fields, "meta": {"kind": kind}}


def _spatial_lr(rng, split):
    return _spatial(rng, split, n=(2, 2), relations=("left of", "right of"), weights={"left of": 1, "right of": 1})


def _spatial_pair(rng, split):
    return _spatial(rng, split, n=(2, 2))


_NAMERS = {"intrinsic": name, "relational": relational_name}


def _named_object(rng, split, n=(2, 4)):
    # An object and an expression that names it, intrinsic or relational (half each).
    kind = _pick(rng, list(_NAMERS))
    namer = _NAMERS[kind]
    image, scene, seed, (obj, text) = _search(
        rng, split, lambda s: _pick(rng, [(o, t) for o in s.objects if (t := namer(o, s.objects)) is not None]), n=n
    )
    return image, scene, seed, obj, text, kind


def _refexp(rng, split):
    image, scene, seed, obj, text, kind = _named_object(rng, split)
    order = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    fields = {"prompt": text, "proposals": [o.box for o in order], "target": obj.box}
    return image, scene, seed, {**fields, "answer": order.index(obj), "meta": {"kind": kind}}


def _where(rng, split):
    image, scene, seed, obj, text, kind = _named_object(rng, split, n=(1, 4))
    fields = {"prompt": PROMPTS["where"].format(name=text), "answer": position(obj, scene.size), "regions": [obj.box]}
    return image, scene, seed, {**fields, "meta": {"kind": kind}}


def _refer(rng, split):
    image, scene, seed, obj, text, kind = _named_object(rng, split)
    return (
        image,
        scene,
        seed,
        {"prompt": PROMPTS["refer"], "answer": text, "regions": [obj.box], "meta": {"kind": kind}},
    )


def _region_caption(rng, split):
    image, scene, seed, obj = _search(rng, split, lambda s: _pick(rng, s.objects), n=(2, 4))
    image, region = draw_region(image, obj.box)
    fields = {"prompt": PROMPTS["region_caption"], "answer": object_phrase(obj), "regions": [region]}
    return image, scene, seed, {**fields, "meta": {"kind": "caption"}}


def _relations(rng, split):
    image, scene, seed, text = _search(rng, split, lambda s: relations_text(s.objects, s.size), n=(2, 3))
    fields = {"prompt": PROMPTS["relations"], "answer": text, "regions": [o.box for o in scene.objects]}
    return image, scene, seed, {**fields, "meta": {"kind": "relations"}}


def _match(rng, split):
    label = int(rng.random() < 0.5)
    if rng.random() < 0.5:
        kind = _pick(rng, list(CORRUPTIONS))
        image, scene, seed, (wrong, _) = _search(rng, split, lambda s: corrupt(s.objects, kind, rng), n=(2, 3))
        text = objects_text(scene.objects if label else wrong)
        regions = [o.box for o in scene.objects]
    else:
        kind = "relation"
        image, scene, seed, (a, rel, b) = _search(rng, split, lambda s: _pick(rng, spatial_pairs(s.objects)), n=(2, 3))
        text = spatial_text(a, rel if label else OPPOSITE[rel], b, scene.objects)
        regions = [a.box, b.box]
    return image, scene, seed, {"prompt": text, "label": label, "regions": regions, "meta": {"kind": kind, "prior": 1}}


_BUILDERS = {
    "caption": _caption,
    "vqa": _vqa,
    "region_vqa": _region_vqa,
    "region_caption": _region_caption,
    "spatial": _spatial,
    "spatial_lr": _spatial_lr,
    "spatial_pair": _spatial_pair,
    "where": _where,
    "refer": _refer,
    "relations": _relations,
    "swap": _swap,
    "refexp": _refexp,
    "match": _match,
}
_TASK_BIASES = {"spatial": ["relation"], "spatial_pair": ["relation"]}


def build_task(name: str, seed: int, split: str = "test") -> tuple[Image.Image, Item]:
    """Build one toy item and its image, deterministically from `(name, seed, split)`.

    Args:
        name (`str`): a key of `TASK_NAMES`.
        seed (`int`): item seed; train and test items with the same seed use different scenes.
        split (`str`, *optional*, defaults to `"test"`): "train" (biased, see `BIASES`), "test" or "val" (balanced;
            "val" is for gates and choices, "test" for reported results).

    Returns:
        `tuple[PIL.Image.Image, Item]`: the image (with the region outline for "region_vqa") and the item, whose
        `image` is the relative path `make_split` saves it to (`images/{item.id}.png`).

    Examples:

    ```python
    >>> image, item = build_task("spatial", 0, "test")
    >>> item.task, len(item.candidates)
    ('choice', 4)
    ```
    """
    if name not in TASK_NAMES:
        raise ValueError(f"`name` (={name!r}) must be one of {list(TASK_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"`split` (={split!r}) must be one of {SPLITS}")
    rng = np.random.default_rng([seed, list(TASK_NAMES).index(name), SPLITS.index(split)])
    image, scene, scene_seed, fields = _BUILDERS[name](rng, split)
    item_id = f"toy-{name}-{split}-{seed}"
    biases = ["shape_color", *_TASK_BIASES.get(name, [])] if split == "train" else []
    meta = {"split": split, **fields.pop("meta"), "biases": biases, "scene_seed": scene_seed, "scene": scene.to_dict()}
    item = Item(id=item_id, task=TASK_NAMES[name], image=f"images/{item_id}.png", meta=meta, **fields)
    return image, item


def iter_split(task: str, n: int, seed: int = 0, split: str = "test") -> Iterator[tuple[Image.Image, Item]]:
    """Yield `n` items of one task and split (item `i` uses seed `seed * 1_000_000 + i`), images in memory."""
    if not 0 < n <= 1_000_000:
        raise ValueError(f"`n` (={n}) must be between 1 and 1,000,000")
    for i in range(n):
        yield build_task(task, seed * 1_000_000 + i, split)


def make_split(task: str, n: int, seed: int, split: str, out_dir: str | Path) -> Path:
    """Write `n` items of one task as `{out_dir}/{task}_{split}.jsonl` plus their PNGs under `{out_dir}/images/`.

    Args:
        task (`str`): a key of `TASK_NAMES`.
        n (`int`): number of items.
        seed (`int`): split seed; different seeds give disjoint item seeds.
        split (`str`): "train", "test" or "val".
        out_dir (`str | Path`): output folder (created if missing).

    Returns:
        `Path`: the JSONL file, readable with `vcontrast.bench.items.read_items`.

    Examples:

    ```python
    >>> import tempfile
    >>> path = make_split("vqa", 10, seed=0, split="test", out_dir=tempfile.mkdtemp())
    >>> path.name
    'vqa_test.jsonl'
    ```
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for image, item in iter_split(task, n, seed, split):
        image.save(out_dir / item.image)
        items.append(item)
    path = out_dir / f"{task}_{split}.jsonl"
    write_items(items, path)
    return path
