"""Training text for the toy VLM: instruction pairs that mix every toy task, and caption swapping for label noise.

The eval tasks (`vcontrast.toy.tasks`) score candidates by likelihood, so instruction tuning teaches their
generative form: the question with the gold text as the answer ("what objects are in the image ?" -> the true
objects text, "where is the red circle relative to the blue square ?" -> the true spatial text, "where is the red
circle ?" -> its location). Region-prompted questions need a box drawn on the image; take them from
`build_task("region_vqa", seed, "train")`.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from .grammar import OPPOSITE, PROMPTS, caption, corrupt, name, objects_text, position, spatial_pairs, spatial_text
from .scenes import Scene
from .tasks import BIASES, CORRUPTIONS, _pick, _unique

T = TypeVar("T")


def instruction_pairs(scene: Scene, rng: np.random.Generator, *, biased: bool = True) -> list[tuple[str, str]]:
    """(question, answer) pairs about one scene, one per applicable kind of question.

    Kinds: caption, objects text, count, colour of a uniquely shaped object, shape of a uniquely coloured object,
    the text (if any), location of a uniquely named object, one spatial relation (generative What'sUp form) and one
    image-text match question answered "yes" or "no" (negatives as in the "match" task).

    Args:
        scene (`Scene`): the scene (make train scenes with `bias=BIASES["shape_color"]`).
        rng (`numpy.random.Generator`): picks objects, the pair and the match text.
        biased (`bool`, *optional*, defaults to `True`): apply the train biases `BIASES["relation"]` (pick the
            ordering of a pair by the weight of its relation, so "left of" wins most horizontal pairs); with `False`
            it is uniform. Match questions are true half the time either way.

    Returns:
        `list[tuple[str, str]]`: question and answer texts, all in `vocabulary()`.

    Examples:

    ```python
    >>> import numpy as np
    >>> from vcontrast.toy.scenes import make_scene
    >>> pairs = instruction_pairs(make_scene(0)[1], np.random.default_rng(0))
    >>> pairs[0][0]
    'describe the image .'
    ```
    """
    objs = scene.objects
    pairs = [
        (PROMPTS["caption"], caption(scene)),
        (PROMPTS["objects"], objects_text(objs)),
        (PROMPTS["count"], str(len(objs))),
    ]
    if o := _pick(rng, _unique(objs, "shape")):
        pairs.append((PROMPTS["color"].format(shape=o.shape), o.color))
    if o := _pick(rng, _unique(objs, "color")):
        pairs.append((PROMPTS["shape"].format(color=o.color), o.shape))
    pairs += [(PROMPTS["text"], t.text) for t in scene.texts]
    if o := _pick(rng, [o for o in objs if name(o, objs) is not None]):
        pairs.append((PROMPTS["where"].format(name=name(o, objs)), position(o, scene.size)))

    spatial = spatial_pairs(objs)
    weights = [BIASES["relation"][r] for _, r, _ in spatial] if biased else None
    if triple := _pick(rng, spatial, weights):
        a, rel, b = triple
        question = PROMPTS["spatial"].format(a=name(a, objs, min_level=1), b=name(b, objs, min_level=1))
        pairs.append((question, spatial_text(a, rel, b, objs)))

    label = rng.random() < 0.5
    if rng.random() < 0.5 and spatial:
        a, rel, b = _pick(rng, spatial)
        text = spatial_text(a, rel if label else OPPOSITE[rel], b, objs)
    else:
        # swap_color needs two different objects; replacing a colour always works
        wrong = corrupt(objs, _pick(rng, list(CORRUPTIONS)), rng) or corrupt(objs, "replace_color", rng)
        text = objects_text(objs if label else wrong[0])
    pairs.append((PROMPTS["match"].format(text=text), "yes" if label else "no"))
    return pairs


def swap_captions(pairs: list[tuple[T, str]], rate: float, seed: int) -> tuple[list[tuple[T, str]], list[int]]:
    """Misalign a fraction of image-text pairs by exchanging their captions (the label noise of CAL's Figure 3).

    `k = round(rate * len(pairs))` pairs, drawn without replacement, pass their captions around one cycle, so
    each of them ends up with another chosen pair's caption and the other pairs keep theirs (a single pair cannot
    swap with itself, so `k = 1` becomes 2). Deterministic in `seed`.

    Args:
        pairs (`list[tuple[Any, str]]`): (image or anything, caption) pairs.
        rate (`float`): fraction of pairs to misalign, in [0, 1].
        seed (`int`): seed of the draw.

    Returns:
        `tuple[list[tuple[Any, str]], list[int]]`: the new pairs (same order, first elements untouched) and the
        sorted indices of the pairs whose caption was replaced.

    Examples:

    ```python
    >>> noisy, swapped = swap_captions([("a", "x"), ("b", "y"), ("c", "z"), ("d", "w")], rate=0.5, seed=0)
    >>> len(swapped)
    2
    ```
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"`rate` (={rate}) must be in [0, 1]")
    k = round(rate * len(pairs))
    if k == 1:
        k = 2 if len(pairs) >= 2 else 0
    chosen = np.random.default_rng(seed).choice(len(pairs), size=k, replace=False).tolist()
    out = list(pairs)
    for j, i in enumerate(chosen):
        out[i] = (pairs[i][0], pairs[chosen[(j + 1) % k]][1])
    return out, sorted(chosen)
