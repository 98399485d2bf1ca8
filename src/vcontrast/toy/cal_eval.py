"""The clean-test metrics of the CAL experiments (docs/results/PLAN.md, E2 and E3).

All three read the balanced "test" split, which the training pools never touch:

- `attribute_nll`: the primary metric, the mean negative log-likelihood (nats) of the attribute tokens (colour,
  shape and size words) of the true captions, teacher-forced, pooled over every such token. Label noise on
  attributes should raise it; a loss that discounts contradicted tokens should raise it less.
- `hallucination_rate`: CHAIR-style, the share of the (colour, shape) objects a greedy caption mentions that are not
  in the scene (CHAIR_i of Rohrbach et al. 2018, on the toy world's closed object vocabulary).
- prior-inconsistent VQA accuracy (`prior_inconsistent_vqa` + `vqa_accuracy`): greedy exact match on colour and
  shape questions whose gold answer is not the one the train split's prior favours ("what color is the circle ?"
  when it is not red), where a model that leans on the prior fails.

`clean_test_sets(n)` builds the items once; `evaluate_clean(model, processor, tests)` runs all three.

`caption_f1` scores a caption against the true one (attribute and object F1), for "crg" and "cal_crg".
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch

__all__ = [
    "attribute_nll",
    "caption_f1",
    "clean_test_sets",
    "evaluate_clean",
    "hallucination_counts",
    "hallucination_rate",
    "mentioned_objects",
    "prior_inconsistent_vqa",
    "vqa_accuracy",
]

ATTRIBUTE_KINDS = ("color", "shape", "size")
VQA_MAX_NEW_TOKENS = 4  # one-word answers, plus room for a wrong longer one


def _attribute_ids(tokenizer) -> dict[int, str]:
    from vcontrast.toy.scenes import COLORS, SHAPES, SIZES

    ids = {}
    for kind, values in zip(ATTRIBUTE_KINDS, (COLORS, SHAPES, SIZES), strict=True):
        for word in values:
            token = tokenizer.convert_tokens_to_ids(word)
            if token is None or token == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no token for the attribute word {word!r}")
            ids[token] = kind
    return ids


@torch.no_grad()
def attribute_nll(model, processor, examples: Sequence[dict], *, batch_size: int = 16) -> dict[str, float]:
    """Mean NLL (nats) of the colour, shape and size tokens of the answers, teacher-forced.

    Args:
        model (`LlavaForConditionalGeneration`): a toy model (every attribute word is one token).
        processor (`LlavaProcessor`): its processor.
        examples (`Sequence[dict]`): examples with `"image"`, `"prompt"` and the true `"answer"` (e.g. clean test
            captions).
        batch_size (`int`, *optional*, defaults to 16): examples per forward.

    Returns:
        `dict[str, float]`: `"attr_nll"` (mean over all attribute tokens of all answers), `"attr_nll/color"`,
        `"attr_nll/shape"`, `"attr_nll/size"` (NaN where none occurred) and `"n_attr_tokens"`.

    Examples:

    ```python
    >>> attribute_nll(model, processor, captions)["attr_nll"]
    0.42
    ```
    """
    from vcontrast.toy.train import collate

    kind_of = _attribute_ids(processor.tokenizer)
    ids = torch.tensor(sorted(kind_of))
    sums, counts = dict.fromkeys(ATTRIBUTE_KINDS, 0.0), dict.fromkeys(ATTRIBUTE_KINDS, 0)
    was_training = model.training
    model.eval()
    for start in range(0, len(examples), batch_size):
        batch = collate(processor, examples[start : start + batch_size])
        labels = batch.pop("labels")
        logits = model(**batch).logits[:, :-1].float()  # (B, T-1, V): the prediction of token t + 1
        gold = labels[:, 1:]  # (B, T-1)
        keep = torch.isin(gold, ids)  # -100 is never an attribute id
        logp = torch.log_softmax(logits[keep], -1)  # (N, V)
        nll = -logp.gather(-1, gold[keep].unsqueeze(-1)).squeeze(-1)  # (N,)
        for token, value in zip(gold[keep].tolist(), nll.tolist(), strict=True):
            sums[kind_of[token]] += value
            counts[kind_of[token]] += 1
    model.train(was_training)
    n = sum(counts.values())
    out = {f"attr_nll/{k}": sums[k] / counts[k] if counts[k] else float("nan") for k in ATTRIBUTE_KINDS}
    return {"attr_nll": sum(sums.values()) / n if n else float("nan"), **out, "n_attr_tokens": n}


def mentioned_objects(text: str) -> list[tuple[str, str]]:
    """The (colour, shape) objects a text mentions: every colour word directly followed by a shape word.

    Examples:

    ```python
    >>> mentioned_objects("a small red circle on the left and a large blue square .")
    [('red', 'circle'), ('blue', 'square')]
    ```
    """
    from vcontrast.toy.grammar import words
    from vcontrast.toy.scenes import COLORS, SHAPES

    return [(a, b) for a, b in pairwise(words(text)) if a in COLORS and b in SHAPES]


def hallucination_counts(text: str, scene) -> tuple[int, int]:
    """`(hallucinated, mentioned)`: how many of the objects `text` mentions have no object of that colour and
    shape in `scene` (a `Scene` or its `to_dict()`), and how many it mentions (with repeats)."""
    from vcontrast.toy.scenes import Scene

    scene = Scene.from_dict(scene) if isinstance(scene, dict) else scene
    present = {(o.color, o.shape) for o in scene.objects}
    mentions = mentioned_objects(text)
    return sum(m not in present for m in mentions), len(mentions)


def hallucination_rate(texts: Sequence[str], scenes: Sequence[Any]) -> dict[str, float]:
    """CHAIR-style hallucination rate of captions: hallucinated mentions / all mentions, pooled over captions.

    Args:
        texts (`Sequence[str]`): generated captions.
        scenes (`Sequence[Scene | dict]`): the scene of each caption.

    Returns:
        `dict[str, float]`: `"hallucination"` (NaN if no caption mentions an object), `"mentions_per_caption"` and
        `"object_recall"` (the share of the scenes' objects whose colour and shape the caption mentions).
    """
    from vcontrast.toy.scenes import Scene

    if len(texts) != len(scenes) or not texts:
        raise ValueError(f"need one scene per caption and at least one caption, got {len(texts)} and {len(scenes)}")
    wrong = mentioned = found = total = 0
    for text, scene in zip(texts, scenes, strict=True):
        scene = Scene.from_dict(scene) if isinstance(scene, dict) else scene
        h, m = hallucination_counts(text, scene)
        wrong, mentioned = wrong + h, mentioned + m
        said = set(mentioned_objects(text))
        found += sum((o.color, o.shape) in said for o in scene.objects)
        total += len(scene.objects)
    return {
        "hallucination": wrong / mentioned if mentioned else float("nan"),
        "mentions_per_caption": mentioned / len(texts),
        "object_recall": found / total if total else float("nan"),
    }


def caption_f1(prediction: str, reference: str) -> dict[str, float]:
    """Generation metrics of a caption against the true one.

    Args:
        prediction (`str`): the generated caption.
        reference (`str`): the true caption (`vcontrast.toy.grammar.caption`).

    Returns:
        `dict[str, float]`: `"attr_f1"`, the F1 of the multisets of attribute words (colours, shapes, sizes and the
        position words top / bottom / left / right / middle), and `"object_f1"`, the F1 of the multisets of
        (colour, shape) pairs (a colour word directly followed by a shape word); 1.0 when both are empty.

    Examples:

    ```python
    >>> caption_f1("a small red circle on the left .", "a small red square on the left .")
    {'attr_f1': 0.75, 'object_f1': 0.0}
    ```
    """
    from collections import Counter

    from vcontrast.toy.grammar import words
    from vcontrast.toy.scenes import COLORS, SHAPES, SIZES

    attributes = {*COLORS, *SHAPES, *SIZES, "top", "bottom", "left", "right", "middle"}
    p, r = words(prediction), words(reference)
    return {
        "attr_f1": _f1(Counter(w for w in p if w in attributes), Counter(w for w in r if w in attributes)),
        "object_f1": _f1(Counter(mentioned_objects(prediction)), Counter(mentioned_objects(reference))),
    }


def _f1(predicted, true) -> float:
    total = sum(predicted.values()) + sum(true.values())
    return 1.0 if total == 0 else 2 * sum((predicted & true).values()) / total


def prior_inconsistent_vqa(n: int, split: str = "test", max_seed: int | None = None) -> list[dict]:
    """The first `n` colour / shape VQA items (item seeds 0, 1, ...) whose gold answer differs from the train prior.

    Args:
        n (`int`): items wanted.
        split (`str`, *optional*, defaults to `"test"`): the split (balanced "test" or "val").
        max_seed (`int`, *optional*): give up after this many seeds (default `50 * n + 100`).

    Returns:
        `list[dict]`: `item_example` dicts; each item has `meta["prior"]` != its answer.
    """
    from vcontrast.toy.tasks import build_task
    from vcontrast.toy.train import item_example

    if n < 1:
        raise ValueError(f"`n` (={n}) must be positive")
    out: list[dict] = []
    limit = 50 * n + 100 if max_seed is None else max_seed
    for seed in range(limit):
        image, item = build_task("vqa", seed, split)
        prior = item.meta.get("prior")
        if item.meta.get("kind") in ("color", "shape") and prior is not None and str(item.answer) != prior:
            out.append(item_example(image, item))
            if len(out) == n:
                return out
    raise RuntimeError(f"only {len(out)} prior-inconsistent VQA items among seeds 0..{limit - 1}")


def vqa_accuracy(answers: Sequence[str], examples: Sequence[dict]) -> float:
    """Exact-match accuracy of greedy answers against the examples' gold answers (toy words, case ignored)."""
    from vcontrast.toy.train import exact_match

    if len(answers) != len(examples) or not answers:
        raise ValueError(f"need one answer per example and at least one, got {len(answers)} and {len(examples)}")
    return sum(exact_match(a, ex["answer"]) for a, ex in zip(answers, examples, strict=True)) / len(examples)


def clean_test_sets(n: int) -> dict[str, list[dict]]:
    """The items of `evaluate_clean`: `n` test captions (item seeds 0..n-1) and `n` prior-inconsistent VQA items."""
    from vcontrast.toy.tasks import iter_split
    from vcontrast.toy.train import item_example

    captions = [item_example(image, item) for image, item in iter_split("caption", n, seed=0, split="test")]
    return {"captions": captions, "vqa": prior_inconsistent_vqa(n)}


def evaluate_clean(
    model, processor, tests: dict[str, list[dict]], *, batch_size: int = 16, max_new_tokens: int = 48
) -> dict[str, float]:
    """The three clean-test metrics of a model (see the module docstring).

    Args:
        model (`LlavaForConditionalGeneration`): the model.
        processor (`LlavaProcessor`): its processor.
        tests (`dict`): `clean_test_sets(n)`.
        batch_size (`int`, *optional*, defaults to 16): examples per forward / `generate` call.
        max_new_tokens (`int`, *optional*, defaults to 48): caption length limit (a 4-object caption is ~40 tokens).

    Returns:
        `dict[str, float]`: `attribute_nll`'s keys, `hallucination_rate`'s keys and `"vqa_prior_inconsistent"`.
    """
    from vcontrast.toy.train import generate_answers

    out: dict[str, float] = attribute_nll(model, processor, tests["captions"], batch_size=batch_size)
    texts = generate_answers(model, processor, tests["captions"], max_new_tokens=max_new_tokens, batch_size=batch_size)
    out |= hallucination_rate(texts, [ex["item"].meta["scene"] for ex in tests["captions"]])
    answers = generate_answers(
        model, processor, tests["vqa"], max_new_tokens=VQA_MAX_NEW_TOKENS, batch_size=batch_size
    )
    out["vqa_prior_inconsistent"] = vqa_accuracy(answers, tests["vqa"])
    return out
