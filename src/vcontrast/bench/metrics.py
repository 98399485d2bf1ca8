"""Benchmark metrics: plain array functions, a registry of per-item metrics, and `compute_metrics`.

Two layers, as in lm-eval (`lm_eval/api/metrics.py`):

- Plain functions on arrays, usable on their own: `accuracy`, `choice_correct`, `choice_accuracy`,
  `group_accuracy` (pair / set accuracy), `auroc`, `f1_at_threshold`, `box_iou`, `acc_at_iou`,
  `normalize_answer`, `exact_match`.
- Registered metrics (`@register_metric`): each turns one `(item, prediction)` into a value, and a named
  aggregation turns the list of values into one number. Each carries `higher_is_better` and `aggregation`.
  A benchmark names its metrics per task (see `vcontrast.bench.registry.Benchmark.metrics`) and
  `compute_metrics(benchmark, items, predictions)` runs them.

Prediction schema (what the eval runner writes, one dict per `Item.id`):

| task | keys | meaning |
|---|---|---|
| "choice" | `scores` (`list[float]`, one per candidate) | higher is better; the prediction is the strict argmax |
|          | `pred_index` (`int`, *optional*) | ignored by the metrics (derived from `scores`) |
| "match" | `p_yes` (`float` in [0, 1]) | P("yes") for "does the image match the text", renormalised over yes/no |
| "refexp" | `pred_box` (`[x0, y0, x1, y1]`, *optional*) | the chosen box; needed if `item.proposals` was empty |
|          | `pred_index` (`int`, *optional*) | index into `item.proposals` |
|          | `scores` (`list[float]`, *optional*) | one per proposal; argmax used if the two above are absent |
| "vqa", "region_vqa", "caption" | `text` (`str`) | the generated answer |

Extra keys are allowed and ignored. For "refexp" the first of `pred_box`, `pred_index`, `scores` present wins.

Ties: a choice whose best score is shared by two candidates counts as wrong (the model did not prefer the gold
text). Group metrics read `item.meta["pair_id"]` and `item.meta["set_id"]`; items without them are skipped, and a
metric with no item left is left out of the result rather than reported as 0.

Examples:

```python
>>> from vcontrast.bench.metrics import auroc, choice_correct, box_iou
>>> auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])  # one tie between classes counts half
0.875
>>> choice_correct([2.0, 2.0], answer=0)  # a tie is wrong
False
>>> float(box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0])
0.14285714285714285
```
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vcontrast.bench.items import Item
from vcontrast.regions import _iou, box_iou

logger = logging.getLogger(__name__)

MATCH_THRESHOLD = 0.5  # P(yes) >= 0.5 counts as "yes" for F1 and match accuracy
IOU_THRESHOLD = 0.5  # refexp: correct when IoU(chosen box, target) >= 0.5 (RefCOCO convention)


class UndefinedMetricError(ValueError):
    """A metric has no value on these items, such as AUROC over one class only (a `--limit` or a split can hold
    one). `compute_metrics` leaves that entry out and, when given `undefined=`, says why there."""


# ---------------------------------------------------------------------------------------------------------------
# Plain functions
# ---------------------------------------------------------------------------------------------------------------


def accuracy(correct: Iterable[bool | float]) -> float:
    """Mean of per-item correctness.

    Args:
        correct (`Iterable[bool | float]`): 1/True for a correct item, 0/False otherwise.

    Returns:
        `float`: fraction correct; raises `ValueError` when empty.
    """
    values = np.asarray(list(correct), dtype=np.float64)
    if values.size == 0:
        raise ValueError("accuracy of an empty list is undefined")
    return float(values.mean())


def choice_correct(scores: Sequence[float], answer: int) -> bool:
    """Whether the gold candidate has the strictly highest score (a tie for the top counts as wrong).

    Args:
        scores (`Sequence[float]`): one score per candidate, higher is better.
        answer (`int`): index of the gold candidate.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"`scores` (={list(scores)!r}) must be a non-empty list of numbers")
    if not 0 <= int(answer) < s.size:
        raise ValueError(f"`answer` (={answer}) is not an index into {s.size} scores")
    if np.isnan(s).any():
        return False
    others = np.delete(s, int(answer))
    return bool(others.size == 0 or s[int(answer)] > others.max())


def choice_accuracy(scores: Sequence[Sequence[float]], answers: Sequence[int]) -> float:
    """Accuracy of strict-argmax choices: `mean_i choice_correct(scores[i], answers[i])`."""
    if len(scores) != len(answers):
        raise ValueError(f"{len(scores)} score lists but {len(answers)} answers")
    return accuracy(choice_correct(s, a) for s, a in zip(scores, answers, strict=True))


def group_accuracy(correct: Sequence[bool], groups: Sequence[Any]) -> float:
    """Fraction of groups whose members are all correct (What'sUp pair and set accuracy).

    Args:
        correct (`Sequence[bool]`): per-item correctness.
        groups (`Sequence`): per-item group key (hashable); items with the same key form one group.

    Returns:
        `float`: (#groups with every member correct) / (#groups).
    """
    if len(correct) != len(groups):
        raise ValueError(f"{len(correct)} correctness values but {len(groups)} group keys")
    all_ok: dict[Any, bool] = {}
    for ok, g in zip(correct, groups, strict=True):
        all_ok[g] = all_ok.get(g, True) and bool(ok)
    if not all_ok:
        raise ValueError("group accuracy of an empty list is undefined")
    return sum(all_ok.values()) / len(all_ok)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    # 1-based ranks, tied values share the mean of their ranks (scipy.stats.rankdata(method="average")).
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    return mean_rank[inverse.reshape(-1)]


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic; ties between classes count 1/2.

    `AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`, with `R_pos` the sum of the positives' average ranks.
    Equals P(score of a random positive > score of a random negative) + 0.5 P(equal).

    Args:
        labels (`Sequence[int]`): 1 for positive, 0 for negative.
        scores (`Sequence[float]`): higher means more positive.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"`labels` (shape {y.shape}) and `scores` (shape {s.shape}) must be 1-D of equal length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"`labels` must be 0/1, got values {sorted(set(y.tolist()))}")
    if np.isnan(s).any():
        raise ValueError("`scores` contains NaN")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetricError(f"AUROC needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def f1_at_threshold(labels: Sequence[int], probs: Sequence[float], threshold: float = MATCH_THRESHOLD) -> float:
    """F1 of the positive class when an item is predicted positive iff `prob >= threshold`.

    Args:
        labels (`Sequence[int]`): 1 for positive, 0 for negative.
        probs (`Sequence[float]`): e.g. P("yes").
        threshold (`float`, *optional*, defaults to 0.5): decision threshold.

    Returns:
        `float`: `2 TP / (2 TP + FP + FN)`; 0.0 when there is no true or predicted positive.
    """
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"`labels` (shape {y.shape}) and `probs` (shape {p.shape}) must be 1-D, non-empty, equal")
    pred = p >= threshold
    gold = y == 1
    tp = int((pred & gold).sum())
    denom = 2 * tp + int((pred & ~gold).sum()) + int((~pred & gold).sum())
    return 0.0 if denom == 0 else 2 * tp / denom


def acc_at_iou(
    pred_boxes: Sequence[Sequence[float]], gt_boxes: Sequence[Sequence[float]], threshold: float = 0.5
) -> float:
    """Fraction of predictions whose IoU with their own gold box is at least `threshold` (acc@0.5 by default)."""
    p = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if p.shape != g.shape or p.shape[0] == 0:
        raise ValueError(f"need equally many predicted ({p.shape[0]}) and gold ({g.shape[0]}) boxes, at least one")
    ious = _iou(p, g)
    return float((ious >= threshold).mean())


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lowercase, replace punctuation by spaces, and collapse whitespace ("The Cat's  hat." -> "the cat s hat")."""
    return " ".join(_PUNCT.sub(" ", str(text).lower()).split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether two answers are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


# ---------------------------------------------------------------------------------------------------------------
# Registry of per-item metrics and aggregations
# ---------------------------------------------------------------------------------------------------------------


def _mean(values: list) -> float:
    return accuracy(values)


def _auroc_agg(values: list[tuple[int, float]]) -> float:
    labels, scores = zip(*values, strict=True)
    return auroc(labels, scores)


def _f1_agg(values: list[tuple[int, float]]) -> float:
    labels, probs = zip(*values, strict=True)
    return f1_at_threshold(labels, probs, MATCH_THRESHOLD)


def _group_agg(values: list[tuple[Any, bool]]) -> float:
    groups, correct = zip(*values, strict=True)
    return group_accuracy(correct, groups)


AGGREGATIONS: dict[str, Callable[[list], float]] = {
    "mean": _mean,
    "auroc": _auroc_agg,
    "f1": _f1_agg,
    "group_all": _group_agg,
}


@dataclass(frozen=True)
class Metric:
    """A registered metric: a per-item function plus how its values are aggregated.

    Args:
        name (`str`): key in `METRICS` and in `compute_metrics` results.
        fn (`Callable[[Item, dict], Any]`): `(item, prediction) -> value`, or `None` to skip the item.
        aggregation (`str`): key in `AGGREGATIONS` ("mean", "auroc", "f1", "group_all").
        higher_is_better (`bool`): direction, for comparing runs.
    """

    name: str
    fn: Callable[[Item, dict], Any]
    aggregation: str
    higher_is_better: bool = True

    def __call__(self, items: Sequence[Item], predictions: Mapping[str, dict]) -> float | None:
        """Aggregate over `items`; `None` when every item was skipped."""
        values = [v for item in items if (v := self.fn(item, predictions[item.id])) is not None]
        return AGGREGATIONS[self.aggregation](values) if values else None


METRICS: dict[str, Metric] = {}


def register_metric(name: str, aggregation: str = "mean", higher_is_better: bool = True) -> Callable:
    """Decorator registering a per-item metric function `(item, prediction) -> value | None` under `name`.

    Examples:

    ```python
    >>> @register_metric("answer_length", aggregation="mean", higher_is_better=False)
    ... def answer_length(item, prediction):
    ...     return len(prediction["text"])
    ```
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"`aggregation` (={aggregation!r}) must be one of {sorted(AGGREGATIONS)}")

    def decorator(fn: Callable[[Item, dict], Any]) -> Callable[[Item, dict], Any]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name=name, fn=fn, aggregation=aggregation, higher_is_better=higher_is_better)
        fn.higher_is_better = higher_is_better
        fn.aggregation = aggregation
        return fn

    return decorator


def _get(prediction: dict, key: str, item: Item) -> Any:
    if key not in prediction:
        raise ValueError(
            f"prediction for item {item.id!r} (task {item.task!r}) lacks {key!r}: got {sorted(prediction)}"
        )
    return prediction[key]


def _choice_is_correct(item: Item, prediction: dict) -> bool:
    scores = _get(prediction, "scores", item)
    if len(scores) != len(item.candidates):
        raise ValueError(f"item {item.id!r}: {len(scores)} scores for {len(item.candidates)} candidates")
    if not isinstance(item.answer, int):
        # a malformed item is bad input: ValueError, as everywhere in vcontrast
        raise ValueError(  # noqa: TRY004
            f"item {item.id!r}: choice `answer` (={item.answer!r}) must be an index into `candidates`"
        )
    return choice_correct(scores, item.answer)


def _p_yes(item: Item, prediction: dict) -> float:
    p = float(_get(prediction, "p_yes", item))
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"item {item.id!r}: `p_yes` (={p}) must be a probability in [0, 1]")
    if item.label not in (0, 1):
        raise ValueError(f"item {item.id!r}: match `label` (={item.label!r}) must be 0 or 1")
    return p


def _refexp_box(item: Item, prediction: dict) -> tuple[float, ...]:
    if prediction.get("pred_box") is not None:
        box = tuple(float(v) for v in prediction["pred_box"])
        if len(box) != 4:
            raise ValueError(f"item {item.id!r}: `pred_box` (={prediction['pred_box']!r}) must be [x0, y0, x1, y1]")
        return box
    if prediction.get("pred_index") is not None:
        index = int(prediction["pred_index"])
    elif prediction.get("scores") is not None:
        scores = np.asarray(prediction["scores"], dtype=np.float64)
        if scores.size != len(item.proposals):
            raise ValueError(f"item {item.id!r}: {scores.size} scores for {len(item.proposals)} proposals")
        index = int(np.argmax(scores))
    else:
        raise ValueError(f"prediction for refexp item {item.id!r} needs `pred_box`, `pred_index` or `scores`")
    if not 0 <= index < len(item.proposals):
        raise ValueError(
            f"item {item.id!r}: `pred_index` (={index}) is not an index into {len(item.proposals)} proposals"
        )
    return item.proposals[index]


@register_metric("accuracy", aggregation="mean")
def _accuracy_item(item: Item, prediction: dict) -> float | None:
    # "choice": strict argmax of `scores` is the gold index; "match": (p_yes >= 0.5) == label.
    if item.task == "choice":
        return float(_choice_is_correct(item, prediction))
    if item.task == "match":
        return float((_p_yes(item, prediction) >= MATCH_THRESHOLD) == bool(item.label))
    raise ValueError(f"`accuracy` is defined for choice and match items, not {item.task!r} (item {item.id!r})")


@register_metric("pair_accuracy", aggregation="group_all")
def _pair_item(item: Item, prediction: dict) -> tuple[Any, bool] | None:
    if "pair_id" not in item.meta:
        return None
    return item.meta["pair_id"], _choice_is_correct(item, prediction)


@register_metric("set_accuracy", aggregation="group_all")
def _set_item(item: Item, prediction: dict) -> tuple[Any, bool] | None:
    if "set_id" not in item.meta:
        return None
    return item.meta["set_id"], _choice_is_correct(item, prediction)


@register_metric("auroc", aggregation="auroc")
def _auroc_item(item: Item, prediction: dict) -> tuple[int, float]:
    return int(item.label), _p_yes(item, prediction)


@register_metric("f1", aggregation="f1")
def _f1_item(item: Item, prediction: dict) -> tuple[int, float]:
    return int(item.label), _p_yes(item, prediction)


@register_metric("acc@0.5", aggregation="mean")
def _acc_iou_item(item: Item, prediction: dict) -> float:
    if item.target is None:
        raise ValueError(f"refexp item {item.id!r} has no `target` box")
    return acc_at_iou([_refexp_box(item, prediction)], [item.target], IOU_THRESHOLD)


def _proposal_ious(item: Item, prediction: dict) -> np.ndarray | None:
    # The proposals the method chose among: the item's own, else those the method recorded (from the proposer).
    proposals = item.proposals or prediction.get("proposals") or []
    if item.target is None or not proposals:
        return None
    return box_iou(np.asarray(proposals, dtype=np.float64), np.asarray([item.target], dtype=np.float64))[:, 0]


@register_metric("oracle@0.5", aggregation="mean")
def _oracle_iou_item(item: Item, prediction: dict) -> float | None:
    # 1 when some proposal reaches IoU 0.5 with the target: the ceiling of any re-ranking of these proposals.
    ious = _proposal_ious(item, prediction)
    return None if ious is None else float(ious.max() >= IOU_THRESHOLD)


@register_metric("random@0.5", aggregation="mean")
def _random_iou_item(item: Item, prediction: dict) -> float | None:
    # The expected acc@0.5 of a uniformly random proposal: the fraction of proposals with IoU >= 0.5.
    ious = _proposal_ious(item, prediction)
    return None if ious is None else float(np.mean(ious >= IOU_THRESHOLD))


@register_metric("exact_match", aggregation="mean")
def _exact_match_item(item: Item, prediction: dict) -> float:
    if item.answer is None:
        raise ValueError(f"item {item.id!r} has no reference `answer` for exact match")
    return float(exact_match(str(_get(prediction, "text", item)), str(item.answer)))


# ---------------------------------------------------------------------------------------------------------------
# Benchmark-level entry point
# ---------------------------------------------------------------------------------------------------------------


def compute_metrics(
    benchmark: str | Any,
    items: Sequence[Item],
    predictions: Mapping[str, dict],
    *,
    undefined: dict[str, str] | None = None,
) -> dict[str, float]:
    """Compute a benchmark's declared metrics from the runner's predictions.

    Args:
        benchmark (`str` or `Benchmark`): a name in `vcontrast.bench.registry.BENCHMARKS`, or the spec itself.
        items (`Sequence[Item]`): the loaded items (any subset, e.g. after `limit`).
        predictions (`Mapping[str, dict]`): `Item.id -> prediction dict` in the schema of this module's docstring.
        undefined (`dict[str, str]`, *optional*): filled with `name -> why` for each entry left out because the
            metric is undefined on its items (`UndefinedMetricError`, e.g. "match/auroc" of a `limit` holding one
            class); the other entries are computed as usual.

    Returns:
        `dict[str, float]`: metric name -> value. Single-task benchmarks use plain names ("accuracy"); benchmarks
        with several tasks (toy) use "task/metric". When the items span several `meta["split"]` values, every
        metric is also given per split as "split/name". For a benchmark whose official numbers are per split
        (`Benchmark.official_per_split`: What'sUp, SugarCrepe, SeeTRUE) the figure over all items is then named
        "pooled/name" (it is no official number) and "mean/name" is the unweighted mean of the per-split values
        (over the splits where the metric is defined). Metrics whose items were all skipped are left out, and so
        are undefined ones (see `undefined`). ViP-Bench declares no metric (its grader is GPT-4) and gives `{}`.

    Raises:
        `ValueError`: no items, an item without a prediction, a prediction that lacks a key or does not fit its
            item (over all items; an entry of one split that fails is left out with a warning).

    Examples:

    ```python
    >>> items = [Item(id="a", task="choice", image="x.jpg", prompt="", candidates=["yes", "no"], answer=0)]
    >>> compute_metrics("sugarcrepe", items, {"a": {"scores": [-1.0, -2.0]}})
    {'accuracy': 1.0}
    ```
    """
    from vcontrast.bench.registry import Benchmark, get_benchmark

    spec = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    items = list(items)
    if not items:
        raise ValueError("`items` is empty: nothing to score")
    missing = [item.id for item in items if item.id not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} of {len(items)} items have no prediction, e.g. {missing[:5]}")
    unknown_tasks = sorted({item.task for item in items} - set(spec.metrics))
    if unknown_tasks:
        raise ValueError(
            f"benchmark {spec.name!r} has no metrics for task(s) {unknown_tasks}; it scores {sorted(spec.metrics)}"
        )
    if not any(spec.metrics.values()):
        logger.info("benchmark %r computes no metric itself (see its module docstring)", spec.name)
        return {}

    prefix_task = len(spec.metrics) > 1
    splits = sorted({str(item.meta["split"]) for item in items if "split" in item.meta})
    pooled = "pooled/" if spec.official_per_split and len(splits) > 1 else ""
    subsets: list[tuple[str, list[Item]]] = [("", items)]
    if len(splits) > 1:
        subsets += [(f"{s}/", [item for item in items if str(item.meta.get("split")) == s]) for s in splits]

    results: dict[str, float] = {}
    for split_prefix, subset in subsets:
        by_task: dict[str, list[Item]] = defaultdict(list)
        for item in subset:
            by_task[item.task].append(item)
        for task, task_items in by_task.items():
            for name in spec.metrics[task]:
                key = f"{split_prefix or pooled}{task + '/' if prefix_task else ''}{name}"
                try:
                    value = METRICS[name](task_items, predictions)
                except ValueError as e:
                    if not split_prefix and not isinstance(e, UndefinedMetricError):
                        raise
                    # e.g. AUROC of a split (or a --limit) holding one class only: leave that entry out, keep the rest
                    logger.warning("%s is undefined: %s", key, e)
                    if undefined is not None:
                        undefined[key] = str(e)
                    continue
                if value is not None:
                    results[key] = value
    if pooled:
        per_split: dict[str, list[float]] = defaultdict(list)
        for key, value in results.items():
            head, _, rest = key.partition("/")
            if head in splits:
                per_split[rest].append(value)
        results.update({f"mean/{name}": float(np.mean(values)) for name, values in per_split.items()})
    return results
