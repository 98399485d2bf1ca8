"""Label noise on toy training examples: the three noise types of the CAL experiment (docs/results/PLAN.md, E2).

Noise touches only the *descriptive* examples of a pool, whose answer states what the image shows
(`DESCRIPTIVE`): captions, region captions, colour / shape VQA and region VQA. Each noise type has its own
eligible examples, and a rate r corrupts `round(r * n_eligible)` of them, chosen uniformly; the corrupted sets of
one seed are nested (30% is a subset of 60%), so rates differ only in how much noise there is.

- "N1", whole-answer swap: the answer becomes another pool example's answer of the same task and question kind
  (another image's caption; another colour-question's colour), one that differs from the true answer. Eligible:
  descriptive examples with such a donor in the pool.
- "N2", one attribute: one colour or shape word of one object in the answer is replaced by another value of the
  same attribute (an article in front of it is fixed, "a" / "an"). Eligible: descriptive examples whose answer
  holds a colour or shape word of an object.
- "N3", prior-aligned hallucination: a circle that is not red is written "red", a square that is not blue is
  written "blue" (the train split's own priors, `vcontrast.toy.tasks.BIASES`); one such object per example.
  Eligible: examples whose answer names the colour of such an object (a caption or region caption mentioning
  one, or a colour question about one).

Pool examples are `vcontrast.toy.train.item_example` dicts plus `"task"`, the toy task name (`pool_example`).

Examples:

```python
>>> noisy, corrupted, eligible = apply_noise(pool, "N2", 0.6, seed=0)
>>> len(corrupted) == round(0.6 * len(eligible))
True
```
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from vcontrast.toy.grammar import words
from vcontrast.toy.scenes import COLORS, SHAPES, Scene
from vcontrast.toy.tasks import BIASES, TASK_NAMES

__all__ = ["DESCRIPTIVE", "NOISE_TYPES", "apply_noise", "attribute_slots", "eligible", "pool_example", "toy_task"]

NOISE_TYPES = ("N1", "N2", "N3")
# Toy task -> the question kinds (`item.meta["kind"]`) whose answers describe the image; None: every item.
DESCRIPTIVE: dict[str, tuple[str, ...] | None] = {
    "caption": None,
    "region_caption": None,
    "vqa": ("color", "shape"),
    "region_vqa": ("color", "shape", "size"),
}
# The train prior's colour of each shape that has one: what N3 writes.
PRIOR_COLOR: dict[str, str] = {shape: color for shape, (color, _) in BIASES["shape_color"].items()}

Example = dict[str, Any]
Slot = tuple[int, str, str]  # (index into words(answer), "color" or "shape", the shape of the object it describes)


def toy_task(item) -> str:
    """The toy task name of an item built by `vcontrast.toy.tasks.build_task` (from its id, "toy-{task}-...")."""
    parts = str(item.id).split("-")
    if len(parts) < 4 or parts[0] != "toy" or parts[1] not in TASK_NAMES:
        raise ValueError(f"item id {item.id!r} is not a toy task id ('toy-TASK-SPLIT-SEED')")
    return parts[1]


def pool_example(example: Example) -> Example:
    """`example` (an `item_example` dict) with `"task"`, its toy task name, added."""
    return {**example, "task": toy_task(example["item"])}


def _kind(example: Example) -> str | None:
    return example["item"].meta.get("kind")


def is_descriptive(example: Example) -> bool:
    """Whether an example's answer describes the image (see `DESCRIPTIVE`)."""
    kinds = DESCRIPTIVE.get(example["task"], ())
    return kinds is None or _kind(example) in kinds


def _asked_object_shape(example: Example) -> str:
    # The shape of the object a (region) VQA question is about: the scene object inside the item's region.
    item = example["item"]
    scene = Scene.from_dict(item.meta["scene"])
    x0, y0, x1, y1 = item.regions[0]
    inside = [o for o in scene.objects if x0 <= o.box[0] and y0 <= o.box[1] and o.box[2] <= x1 and o.box[3] <= y1]
    if len(inside) != 1:
        raise ValueError(f"item {item.id!r}: {len(inside)} objects inside its region {item.regions[0]}, expected 1")
    return inside[0].shape


def attribute_slots(example: Example) -> list[Slot]:
    """The colour and shape words of objects in an example's answer.

    Captions and region captions: every colour word directly followed by a shape word ("red circle") gives two
    slots; a colour / shape question's one-word answer gives one (its object's shape from the scene). Other
    examples: none.

    Returns:
        `list[tuple[int, str, str]]`: `(index into words(answer), "color" or "shape", the object's shape)`.
    """
    if not is_descriptive(example):
        return []
    ws = words(example["answer"])
    if example["task"] in ("caption", "region_caption"):
        slots: list[Slot] = []
        for i in range(len(ws) - 1):
            if ws[i] in COLORS and ws[i + 1] in SHAPES:
                slots += [(i, "color", ws[i + 1]), (i + 1, "shape", ws[i + 1])]
        return slots
    kind = _kind(example)
    if kind == "color" and len(ws) == 1 and ws[0] in COLORS:
        return [(0, "color", _asked_object_shape(example))]
    if kind == "shape" and len(ws) == 1 and ws[0] in SHAPES:
        return [(0, "shape", ws[0])]
    return []


def _prior_slots(example: Example) -> list[Slot]:
    # N3: the colour words of circles that are not red and squares that are not blue.
    ws = words(example["answer"])
    return [
        (i, kind, shape)
        for i, kind, shape in attribute_slots(example)
        if kind == "color" and shape in PRIOR_COLOR and ws[i] != PRIOR_COLOR[shape]
    ]


def _n1_group(example: Example) -> tuple[str, str | None]:
    return example["task"], _kind(example)


def eligible(pool: Sequence[Example], noise: str) -> list[int]:
    """Indices of the pool examples that noise type `noise` can corrupt (see the module docstring)."""
    if noise not in NOISE_TYPES:
        raise ValueError(f"`noise` (={noise!r}) must be one of {NOISE_TYPES}")
    if noise == "N2":
        return [i for i, ex in enumerate(pool) if attribute_slots(ex)]
    if noise == "N3":
        return [i for i, ex in enumerate(pool) if is_descriptive(ex) and _prior_slots(ex)]
    answers: dict[tuple, set[str]] = {}
    for ex in pool:
        if is_descriptive(ex):
            answers.setdefault(_n1_group(ex), set()).add(ex["answer"])
    return [i for i, ex in enumerate(pool) if is_descriptive(ex) and len(answers[_n1_group(ex)]) > 1]


def _replace_word(answer: str, index: int, new: str) -> str:
    ws = words(answer)
    ws[index] = new
    if index > 0 and ws[index - 1] in ("a", "an"):  # the article agrees with the word right after it
        ws[index - 1] = "an" if new[0] in "aeiou" else "a"
    return " ".join(ws)


def _corrupt(ex: Example, noise: str, rng: random.Random, donors: dict[tuple, list[str]]) -> str:
    if noise == "N1":
        return rng.choice([answer for answer in donors[_n1_group(ex)] if answer != ex["answer"]])
    if noise == "N2":
        index, kind, _ = rng.choice(attribute_slots(ex))
        current = words(ex["answer"])[index]
        values = [v for v in (COLORS if kind == "color" else SHAPES) if v != current]
        return _replace_word(ex["answer"], index, rng.choice(values))
    index, _, shape = rng.choice(_prior_slots(ex))
    return _replace_word(ex["answer"], index, PRIOR_COLOR[shape])


def apply_noise(
    pool: Sequence[Example], noise: str, rate: float, seed: int | str
) -> tuple[list[Example], list[int], list[int]]:
    """Corrupt a fraction `rate` of a pool's eligible examples with noise type `noise`.

    Args:
        pool (`Sequence[dict]`): clean examples (`pool_example` dicts: `"answer"`, `"task"`, `"item"`).
        noise (`str`): "N1", "N2" or "N3".
        rate (`float`): fraction of the eligible examples to corrupt, in [0, 1].
        seed (`int | str`): draws which examples and what they become; the corrupted examples at a lower rate are
            a prefix of those at a higher one (one permutation of the eligible examples per seed and noise type).

    Returns:
        `tuple[list[dict], list[int], list[int]]`: the pool with corrupted answers (each corrupted example gets
        `"clean_answer"`, its true answer), the corrupted indices (sorted) and the eligible indices. Every corrupted
        answer differs from the true one.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"`rate` (={rate!r}) must be in [0, 1]")
    candidates = eligible(pool, noise)
    rng = random.Random(f"noise-{noise}-{seed}")
    order = rng.sample(candidates, len(candidates))
    corrupted = sorted(order[: round(rate * len(candidates))])
    donors: dict[tuple, list[str]] = {}  # N1: the answers of each (task, kind), one per example
    for ex in pool:
        if is_descriptive(ex):
            donors.setdefault(_n1_group(ex), []).append(ex["answer"])
    out = list(pool)
    for i in corrupted:  # one rng per example: an example corrupted at two rates gets the same answer
        answer = _corrupt(pool[i], noise, random.Random(f"noise-{noise}-{seed}-{i}"), donors)
        if answer == pool[i]["answer"]:
            raise AssertionError(f"noise {noise} left example {i} unchanged")  # a bug, not an input error
        out[i] = {**pool[i], "answer": answer, "clean_answer": pool[i]["answer"]}
    return out, corrupted, candidates
