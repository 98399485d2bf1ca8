"""What'sUp loader on a fixture in the authors' data/ layout."""

import json

import pytest

from vcontrast.bench import whatsup
from vcontrast.bench.metrics import compute_metrics

RELATIONS_A = ["left_of", "right_of", "on", "under"]


def _write_whatsup(root, make_image):
    controlled = []
    for pair in ("mug_{}_table", "beer-bottle_{}_armchair"):
        for rel in RELATIONS_A:
            name = pair.format(rel) + ".jpeg"
            make_image(root / "controlled_images" / name)
            words = rel.replace("_", " ")
            others = [r.replace("_", " ") for r in RELATIONS_A if r != rel]
            obj1, obj2 = pair.split("_{}_")
            controlled.append(
                {
                    "image_path": f"data/controlled_images/{name}",
                    "caption_options": [f"A {obj1} {words} a {obj2}"] + [f"A {obj1} {o} a {obj2}" for o in others],
                }
            )
    (root / "controlled_images_dataset.json").write_text(json.dumps(controlled))
    make_image(root / "val2017" / "000000000139.jpg")
    (root / "coco_qa_one_obj.json").write_text(json.dumps([[139, "A dog on the left", "A dog on the right"]]))
    make_image(root / "vg_images" / "2345.jpg")
    (root / "vg_qa_two_obj.json").write_text(json.dumps([[2345, "cup above plate", "cup below plate"]]))


def test_load_controlled_and_groups(tmp_path, make_image):
    _write_whatsup(tmp_path, make_image)
    items = whatsup.load(tmp_path, split="controlled_a")
    assert len(items) == 8
    first = items[0]
    assert first.task == "choice" and first.answer == 0 and len(first.candidates) == 4
    assert first.image == str(tmp_path / "controlled_images" / "mug_left_of_table.jpeg")
    assert first.meta["set_id"] == "controlled_a:mug|table"
    assert first.meta["pair_id"] == "controlled_a:mug|table:left_right"
    assert items[2].meta["pair_id"] == "controlled_a:mug|table:on_under"
    assert len({it.meta["pair_id"] for it in items}) == 4 and len({it.meta["set_id"] for it in items}) == 2
    assert len(whatsup.load(tmp_path, split="controlled_a", limit=3)) == 3

    # mug set all right; bottle: the "under" image wrong -> pairs 3/4, sets 1/2, individual 7/8
    preds = {it.id: {"scores": [1.0, 0.0, 0.0, 0.0]} for it in items}
    preds[items[7].id] = {"scores": [0.0, 1.0, 0.0, 0.0]}
    out = compute_metrics("whatsup", items, preds)
    assert out == {"accuracy": 7 / 8, "pair_accuracy": 0.75, "set_accuracy": 0.5}


def test_load_all_present_splits(tmp_path, make_image):
    _write_whatsup(tmp_path, make_image)
    items = whatsup.load(tmp_path)
    splits = [it.meta["split"] for it in items]
    assert splits.count("controlled_a") == 8 and splits.count("coco_spatial_one") == 1
    coco = next(it for it in items if it.meta["split"] == "coco_spatial_one")
    assert coco.image.endswith("val2017/000000000139.jpg") and coco.candidates[0] == "A dog on the left"
    gqa = next(it for it in items if it.meta["split"] == "gqa_spatial_two")
    assert gqa.image.endswith("vg_images/2345.jpg") and "pair_id" not in gqa.meta
    assert len(whatsup.load(tmp_path, limit=1)) == 3  # limit is per split


def test_missing_and_bad_files(tmp_path, make_image):
    with pytest.raises(ValueError, match="does not exist"):
        whatsup.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="(?s)no annotation file.*controlled_images_dataset.json"):
        whatsup.load(tmp_path)
    with pytest.raises(ValueError, match="missing file .*controlled_clevr_dataset.json"):
        whatsup.load(tmp_path, split="controlled_b")
    with pytest.raises(ValueError, match="unknown split"):
        whatsup.load(tmp_path, split="controlled_c")
    (tmp_path / "coco_qa_two_obj.json").write_text(json.dumps([[1, "only one caption"]]))
    with pytest.raises(ValueError, match="entry 0"):
        whatsup.load(tmp_path, split="coco_spatial_two")
    (tmp_path / "coco_qa_two_obj.json").write_text(json.dumps([[1, "a", "b"]]))
    with pytest.raises(ValueError, match="image not found.*000000000001.jpg"):
        whatsup.load(tmp_path, split="coco_spatial_two")


def test_headline_is_per_subset_with_mean_and_pooled_names(tmp_path, make_image):
    _write_whatsup(tmp_path, make_image)
    items = whatsup.load(tmp_path)
    preds = {it.id: {"scores": [1.0] + [0.0] * (len(it.candidates) - 1)} for it in items}
    preds["controlled_a/beer-bottle_under_armchair"] = {"scores": [0.0, 1.0, 0.0, 0.0]}
    preds["coco_spatial_one/139"] = {"scores": [0.0, 1.0]}
    out = compute_metrics("whatsup", items, preds)
    assert out["controlled_a/accuracy"] == 7 / 8 and out["controlled_a/pair_accuracy"] == 0.75
    assert out["coco_spatial_one/accuracy"] == 0.0 and out["gqa_spatial_two/accuracy"] == 1.0
    assert out["mean/accuracy"] == pytest.approx((7 / 8 + 0 + 1) / 3)  # subsets weigh the same
    assert out["pooled/accuracy"] == pytest.approx(8 / 10)  # 10 items; named pooled, not the headline
    assert out["mean/set_accuracy"] == 0.5  # only the controlled subset has sets
    assert "accuracy" not in out and "pair_accuracy" not in out


def test_ids_come_from_the_data(tmp_path, make_image):
    _write_whatsup(tmp_path, make_image)
    (tmp_path / "coco_qa_one_obj.json").write_text(json.dumps([[139, "a", "b"], [139, "c", "d"]]))
    ids = [it.id for it in whatsup.load(tmp_path)]
    assert ids[0] == "controlled_a/mug_left_of_table"
    assert "coco_spatial_one/139" in ids and "coco_spatial_one/139#2" in ids and "gqa_spatial_two/2345" in ids
