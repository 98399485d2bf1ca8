"""Toy benchmark: Item JSONL read back and scored per task."""

import pytest

from vcontrast.bench import toy
from vcontrast.bench.items import Item, write_items
from vcontrast.bench.metrics import compute_metrics


def test_load_and_score(tmp_path, make_image):
    make_image(tmp_path / "images" / "0.png")
    items = [
        Item(id="c0", task="choice", image="images/0.png", prompt="", candidates=["a", "b"], answer=1),
        Item(id="m0", task="match", image="images/0.png", prompt="red", label=1),
        Item(id="m1", task="match", image="images/0.png", prompt="blue", label=0),
        Item(id="q0", task="vqa", image="images/0.png", prompt="colour?", answer="red"),
    ]
    write_items(items[:1], tmp_path / "spatial_test.jsonl")  # make_split's {task}_{split}.jsonl
    write_items(items[1:3], tmp_path / "match_test.jsonl")
    write_items(items[3:], tmp_path / "test.jsonl")
    write_items(items[:1], tmp_path / "spatial_train.jsonl")
    loaded = toy.load(tmp_path)
    assert [it.id for it in loaded] == ["q0", "m0", "m1", "c0"]
    assert [it.meta["split"] for it in loaded] == ["test", "match_test", "match_test", "spatial_test"]
    assert loaded[0].image == str(tmp_path / "images" / "0.png")
    assert [it.id for it in toy.load(tmp_path, split="match_test")] == ["m0", "m1"]
    assert len(toy.load(tmp_path, split="train")) == 1 and len(toy.load(tmp_path, limit=1)) == 3

    preds = {"c0": {"scores": [0.0, 1.0]}, "m0": {"p_yes": 0.7}, "m1": {"p_yes": 0.4}, "q0": {"text": "Red"}}
    out = compute_metrics("toy", loaded, preds)
    assert out["choice/accuracy"] == 1.0 and out["spatial_test/choice/accuracy"] == 1.0
    assert out["match/auroc"] == 1.0 and out["match/f1"] == 1.0 and out["vqa/exact_match"] == 1.0
    assert out["match_test/match/auroc"] == 1.0


def test_missing_split(tmp_path):
    write_items([], tmp_path / "vqa_train.jsonl")
    with pytest.raises(ValueError, match=r"no test.jsonl or \*_test.jsonl .*\(files found: \['vqa_train'\]\)"):
        toy.load(tmp_path)
