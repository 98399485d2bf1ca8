"""Metric functions against hand-computed values, and compute_metrics end to end."""

import math

import numpy as np
import pytest

from vcontrast.bench.items import Item
from vcontrast.bench.metrics import (
    METRICS,
    acc_at_iou,
    accuracy,
    auroc,
    box_iou,
    choice_accuracy,
    choice_correct,
    compute_metrics,
    exact_match,
    f1_at_threshold,
    group_accuracy,
    normalize_answer,
    register_metric,
)


def test_accuracy_and_choice():
    assert accuracy([True, False, True, True]) == 0.75
    assert choice_correct([0.3, 0.1, 0.2], 0)
    assert not choice_correct([0.3, 0.5], 0)
    assert not choice_correct([0.5, 0.5], 0)  # a tie is wrong
    assert not choice_correct([0.5, 0.5, 0.1], 1)
    assert not choice_correct([float("nan"), 0.1], 0)
    assert choice_accuracy([[1, 0], [0, 1], [2, 2]], [0, 0, 0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="answer"):
        choice_correct([1.0, 2.0], 2)
    with pytest.raises(ValueError, match="empty"):
        accuracy([])


def test_group_accuracy_pairs_and_sets():
    # One What'sUp object pair (4 images): left/right pair both right, on/under pair one wrong.
    correct = [True, True, True, False]
    pairs = ["s:lr", "s:lr", "s:ou", "s:ou"]
    sets = ["s"] * 4
    assert group_accuracy(correct, pairs) == 0.5
    assert group_accuracy(correct, sets) == 0.0
    # A second, fully correct object pair.
    correct += [True] * 4
    pairs += ["t:lr", "t:lr", "t:ou", "t:ou"]
    sets += ["t"] * 4
    assert group_accuracy(correct, pairs) == 0.75
    assert group_accuracy(correct, sets) == 0.5


def test_auroc_matches_hand_values_with_ties():
    # All pairs (pos, neg): (0.5 vs 0.1) win, (0.5 vs 0.5) tie, (0.9 vs both) win -> (1 + .5 + 2) / 4
    assert auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875
    assert auroc([1, 0], [0.9, 0.1]) == 1.0
    assert auroc([1, 0], [0.1, 0.9]) == 0.0
    assert auroc([1, 1, 0, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5
    # 3 pos x 2 neg: pos {0.8, 0.4, 0.4}, neg {0.4, 0.2}: 0.8 beats both (2), each 0.4 ties 0.4, beats 0.2 (1.5 each)
    assert auroc([1, 1, 1, 0, 0], [0.8, 0.4, 0.4, 0.4, 0.2]) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 1], [0.2, 0.3])


def test_auroc_equals_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = rng.integers(0, 5, 50) / 4  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert auroc(labels, scores) == pytest.approx(pairwise)


def test_f1_at_threshold():
    # pred (>= 0.5): 1, 1, 0, 1, 0; gold: 1, 0, 1, 1, 0 -> TP 2, FP 1, FN 1 -> F1 = 4 / 6
    assert f1_at_threshold([1, 0, 1, 1, 0], [0.9, 0.5, 0.4, 0.7, 0.1]) == pytest.approx(2 / 3)
    assert f1_at_threshold([1, 0], [0.2, 0.8], threshold=0.9) == 0.0
    assert f1_at_threshold([0, 0], [0.1, 0.2]) == 0.0


def test_box_iou_hand_values():
    a = [[0, 0, 2, 2], [0, 0, 1, 1]]
    b = [[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]]
    iou = box_iou(a, b)
    assert iou.shape == (2, 4)
    np.testing.assert_allclose(iou[0], [1 / 7, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.25, 0.0, 0.0])
    assert acc_at_iou([[0, 0, 2, 2], [0, 0, 2, 2]], [[0, 0, 2, 1], [1, 1, 3, 3]]) == 0.5  # IoU 0.5 counts


def test_exact_match_normalisation():
    assert normalize_answer("  The Cat's hat! ") == "the cat s hat"
    assert exact_match("Red.", "red")
    assert not exact_match("dark red", "red")


def test_registered_metric_metadata():
    assert METRICS["auroc"].higher_is_better and METRICS["auroc"].aggregation == "auroc"
    assert METRICS["acc@0.5"].aggregation == "mean"
    with pytest.raises(ValueError, match="already registered"):
        register_metric("accuracy")(lambda item, pred: 1.0)
    with pytest.raises(ValueError, match="aggregation"):
        register_metric("x", aggregation="median")


def _choice(i, scores_answer=0, split=None, pair=None, set_id=None):
    meta = {k: v for k, v in (("split", split), ("pair_id", pair), ("set_id", set_id)) if v is not None}
    return Item(id=str(i), task="choice", image="x.png", prompt="", candidates=["a", "b"], answer=0, meta=meta)


def test_compute_metrics_choice_per_split_and_groups():
    items = [_choice(i, split="s1" if i < 2 else "s2", pair=f"p{i // 2}", set_id="g") for i in range(4)]
    preds = {"0": {"scores": [1, 0]}, "1": {"scores": [1, 0]}, "2": {"scores": [1, 1]}, "3": {"scores": [0, 1]}}
    out = compute_metrics("whatsup", items, preds)
    # What'sUp's numbers are per subset: the figures over all items are named pooled
    assert out["pooled/accuracy"] == 0.5 and "accuracy" not in out
    assert out["pooled/pair_accuracy"] == 0.5
    assert out["pooled/set_accuracy"] == 0.0
    assert out["s1/accuracy"] == 1.0 and out["s2/accuracy"] == 0.0 and out["mean/accuracy"] == 0.5
    # no groups -> group metrics left out
    out = compute_metrics("sugarcrepe", [_choice(0)], {"0": {"scores": [-1.0, -3.0]}})
    assert out == {"accuracy": 1.0}


def test_compute_metrics_errors():
    items = [_choice(0), _choice(1)]
    with pytest.raises(ValueError, match="no prediction"):
        compute_metrics("sugarcrepe", items, {"0": {"scores": [1, 0]}})
    with pytest.raises(ValueError, match="3 scores for 2 candidates"):
        compute_metrics("sugarcrepe", items[:1], {"0": {"scores": [1, 0, 0]}})
    with pytest.raises(ValueError, match="lacks 'scores'"):
        compute_metrics("sugarcrepe", items[:1], {"0": {"text": "a"}})
    match_item = Item(id="m", task="match", image="x.png", prompt="t", label=1)
    with pytest.raises(ValueError, match="no metrics for task"):
        compute_metrics("sugarcrepe", [match_item], {"m": {"p_yes": 0.3}})
    with pytest.raises(ValueError, match="unknown benchmark"):
        compute_metrics("nope", items, {})


def test_compute_metrics_match_refexp_and_open_answers():
    labels, p = [1, 0, 1, 0], [0.9, 0.5, 0.4, 0.1]
    items = [Item(id=str(i), task="match", image="x.png", prompt="t", label=y) for i, y in enumerate(labels)]
    out = compute_metrics("seetrue", items, {str(i): {"p_yes": v} for i, v in enumerate(p)})
    assert out["auroc"] == pytest.approx(auroc(labels, p)) and out["auroc"] == 0.75
    assert out["f1"] == pytest.approx(f1_at_threshold(labels, p))

    ref = {"task": "refexp", "image": "x.png", "prompt": "the left cup", "proposals": [(0, 0, 2, 2), (5, 5, 9, 9)]}
    items = [Item(id=str(i), target=(0, 0, 2, 2), **ref) for i in range(4)]
    preds = {
        "0": {"pred_index": 0},
        "1": {"scores": [0.1, 0.9]},
        "2": {"pred_box": [0, 0, 2, 1], "pred_index": 1},  # pred_box wins; IoU 0.5 counts
        "3": {"scores": [0.9, 0.1], "pred_index": 1},  # pred_index wins over scores
    }
    # every item has one proposal of two hitting the target: oracle 1, random pick 1/2
    assert compute_metrics("refcoco", items, preds) == {"acc@0.5": 0.5, "oracle@0.5": 1.0, "random@0.5": 0.5}

    vqa = [Item(id="a", task="vqa", image="x.png", prompt="q", answer="Red"), _choice("c")]
    out = compute_metrics("toy", vqa, {"a": {"text": "red."}, "c": {"scores": [0, 1]}})
    assert out == {"vqa/exact_match": 1.0, "choice/accuracy": 0.0}

    vip = Item(id="v", task="region_vqa", image="x.png", prompt="q", answer="a")
    assert compute_metrics("vipbench", [vip], {"v": {"text": "a"}}) == {}


def test_per_split_auroc_left_out_when_one_class():
    items = [
        Item(id=str(i), task="match", image="x.png", prompt="t", label=y, meta={"split": s})
        for i, (y, s) in enumerate([(1, "a"), (0, "a"), (1, "b")])
    ]
    out = compute_metrics("seetrue", items, {str(i): {"p_yes": v} for i, v in enumerate([0.8, 0.2, 0.6])})
    assert out["pooled/auroc"] == 1.0 and out["a/auroc"] == 1.0 and "auroc" not in out
    assert "b/auroc" not in out and not math.isnan(out["b/f1"])
    assert out["mean/auroc"] == 1.0  # the mean over the sources where AUROC is defined


def test_official_per_split_names_pooled_and_mean():
    # SeeTRUE: AUROC per source, their unweighted mean, and the pooled AUROC only under "pooled/"
    rows = [(1, "a", 0.9), (0, "a", 0.1), (1, "b", 0.4), (0, "b", 0.6), (1, "b", 0.7), (0, "b", 0.2)]
    items = [
        Item(id=str(i), task="match", image="x.png", prompt="t", label=y, meta={"split": s})
        for i, (y, s, _) in enumerate(rows)
    ]
    preds = {str(i): {"p_yes": p} for i, (_, _, p) in enumerate(rows)}
    out = compute_metrics("seetrue", items, preds)
    b_auroc = auroc([1, 0, 1, 0], [0.4, 0.6, 0.7, 0.2])
    assert out["a/auroc"] == 1.0 and out["b/auroc"] == pytest.approx(b_auroc)
    assert out["mean/auroc"] == pytest.approx((1.0 + b_auroc) / 2)
    assert out["pooled/auroc"] == pytest.approx(auroc([y for y, _, _ in rows], [p for _, _, p in rows]))
    assert "auroc" not in out and "f1" not in out
    # toy (not official per split) keeps its pooled numbers unprefixed
    toy = compute_metrics("toy", items, preds)
    assert "match/auroc" in toy and not any(k.startswith(("pooled/", "mean/")) for k in toy)
