"""The CAL experiments' clean-test metrics against brute-force and hand-computed references."""

import math

import pytest
import torch

from vcontrast.toy.cal_eval import (
    attribute_nll,
    clean_test_sets,
    evaluate_clean,
    hallucination_counts,
    hallucination_rate,
    mentioned_objects,
    prior_inconsistent_vqa,
    vqa_accuracy,
)
from vcontrast.toy.model import build_model
from vcontrast.toy.scenes import COLORS, SHAPES, SIZES, Obj, Scene
from vcontrast.toy.tasks import iter_split
from vcontrast.toy.tokenizer import chat_prompt
from vcontrast.toy.train import item_example, toy_processor

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "vision_hidden_size": 32, "vision_layers": 2}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    processor = toy_processor()
    return build_model(processor, **TINY).eval(), processor


def _slow_attribute_nll(model, processor, examples):
    # One example at a time, unpadded, and one forward per attribute token on the prefix before it.
    tok = processor.tokenizer
    ids = {tok.convert_tokens_to_ids(w) for w in [*COLORS, *SHAPES, *SIZES]}
    values = []
    for ex in examples:
        prompt = chat_prompt(processor, ex["prompt"])
        full = processor(images=[ex["image"]], text=[f"{prompt} {ex['answer']}{tok.eos_token}"], return_tensors="pt")
        n_prompt = len(processor(images=[ex["image"]], text=[prompt])["input_ids"][0])
        input_ids = full["input_ids"][0]
        for t in range(n_prompt, len(input_ids)):
            if int(input_ids[t]) in ids:
                with torch.no_grad():
                    logits = model(input_ids=input_ids[None, :t], pixel_values=full["pixel_values"]).logits[0, -1]
                values.append(-torch.log_softmax(logits.double(), -1)[input_ids[t]].item())
    return sum(values) / len(values), len(values)


def test_attribute_nll_matches_a_brute_force_reference(tiny):
    model, processor = tiny
    captions = [item_example(image, item) for image, item in iter_split("caption", 4, split="test")]
    assert len({len(ex["answer"].split()) for ex in captions}) > 1  # different lengths: the batch is padded
    out = attribute_nll(model, processor, captions, batch_size=3)
    slow, n = _slow_attribute_nll(model, processor, captions)
    assert out["n_attr_tokens"] == n and out["attr_nll"] == pytest.approx(slow, abs=1e-4)
    by_kind = [out[f"attr_nll/{k}"] for k in ("color", "shape", "size")]
    assert min(by_kind) <= out["attr_nll"] <= max(by_kind)
    assert not model.training


def test_hallucination_by_hand():
    scene = Scene(64, (150, 150, 150), [Obj("red", "circle", "small", (4, 4, 12, 12)),
                                        Obj("blue", "square", "large", (30, 30, 46, 46))])  # fmt: skip
    other = Scene(64, (150, 150, 150), [Obj("red", "circle", "small", (4, 4, 12, 12)),
                                        Obj("yellow", "triangle", "small", (30, 30, 38, 38))])  # fmt: skip
    text = "a small red circle on the left , a large green square at the top and a small blue square ."
    assert mentioned_objects(text) == [("red", "circle"), ("green", "square"), ("blue", "square")]
    assert hallucination_counts(text, scene) == (1, 3)
    assert hallucination_counts(text, scene.to_dict()) == (1, 3)
    out = hallucination_rate([text, "a red circle and a red circle"], [scene, other])
    # 1 wrong of 5 mentions; 2.5 mentions per caption; objects named: 2 of 2, then 1 of 2
    assert out == pytest.approx({"hallucination": 0.2, "mentions_per_caption": 2.5, "object_recall": 0.75})
    assert math.isnan(hallucination_rate(["nothing here ."], [scene])["hallucination"])
    with pytest.raises(ValueError, match="one scene per caption"):
        hallucination_rate([text], [])


def test_prior_inconsistent_vqa_items():
    items = prior_inconsistent_vqa(12)
    assert len(items) == 12
    for ex in items:
        meta = ex["item"].meta
        assert meta["kind"] in ("color", "shape") and meta["prior"] is not None and ex["answer"] != meta["prior"]
        assert meta["split"] == "test"
    seeds = [int(ex["item"].id.rsplit("-", 1)[1]) for ex in items]
    assert seeds == sorted(seeds) and items[0]["item"].id == prior_inconsistent_vqa(1)[0]["item"].id
    with pytest.raises(RuntimeError, match="only"):
        prior_inconsistent_vqa(5, max_seed=3)


def test_vqa_accuracy_by_hand():
    examples = [{"answer": "red"}, {"answer": "circle"}, {"answer": "blue"}, {"answer": "square"}]
    assert vqa_accuracy(["Red", "circle .", "green", "square"], examples) == 0.5
    with pytest.raises(ValueError, match="one answer per example"):
        vqa_accuracy([], [])


def test_evaluate_clean_keys(tiny):
    model, processor = tiny
    tests = clean_test_sets(2)
    assert len(tests["captions"]) == 2 and len(tests["vqa"]) == 2
    out = evaluate_clean(model, processor, tests, batch_size=2, max_new_tokens=4)
    assert {"attr_nll", "hallucination", "object_recall", "vqa_prior_inconsistent", "n_attr_tokens"} <= set(out)
    assert 0 <= out["vqa_prior_inconsistent"] <= 1 and out["attr_nll"] > 0
