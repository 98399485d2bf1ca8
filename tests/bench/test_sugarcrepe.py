"""SugarCrepe loader on a fixture in the official split-file layout."""

import json

import pytest

from vcontrast.bench import sugarcrepe
from vcontrast.bench.metrics import compute_metrics


def _write(root, make_image, split="swap_att", n=3, name=None):
    data = {}
    for i in range(n):
        filename = f"{i:012d}.jpg"
        make_image(root / "val2017" / filename)
        data[str(i)] = {"filename": filename, "caption": f"a white cat {i}", "negative_caption": f"a black cat {i}"}
    (root / f"{name or split}.json").write_text(json.dumps(data))


def test_load_and_score(tmp_path, make_image):
    _write(tmp_path, make_image)
    _write(tmp_path, make_image, split="add_obj", n=2, name="add_ent")  # early-release file name
    items = sugarcrepe.load(tmp_path, split="swap_att")
    assert [it.id for it in items] == ["swap_att/0", "swap_att/1", "swap_att/2"]
    assert items[0].candidates == ["a white cat 0", "a black cat 0"] and items[0].answer == 0
    assert items[0].image == str(tmp_path / "val2017" / "000000000000.jpg")
    assert len(sugarcrepe.load(tmp_path, split="swap_att", limit=2)) == 2
    both = sugarcrepe.load(tmp_path)
    assert {it.meta["split"] for it in both} == {"swap_att", "add_obj"}

    preds = {it.id: {"scores": [-1.0, -2.0]} for it in both}
    preds["swap_att/1"] = {"scores": [-2.0, -2.0]}  # tie -> wrong
    out = compute_metrics("sugarcrepe", both, preds)
    assert out["swap_att/accuracy"] == pytest.approx(2 / 3) and out["add_obj/accuracy"] == 1
    assert out["pooled/accuracy"] == 0.8 and out["mean/accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert "accuracy" not in out


def test_missing_and_bad(tmp_path, make_image):
    with pytest.raises(ValueError, match="missing file .*replace_rel.json"):
        sugarcrepe.load(tmp_path, split="replace_rel")
    with pytest.raises(ValueError, match="no split file"):
        sugarcrepe.load(tmp_path)
    (tmp_path / "replace_rel.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must hold an object"):
        sugarcrepe.load(tmp_path, split="replace_rel")
    (tmp_path / "replace_rel.json").write_text(json.dumps({"0": {"filename": "x.jpg", "caption": "c"}}))
    with pytest.raises(ValueError, match=r"replace_rel.json, key '0': `negative_caption` \(=None\)"):
        sugarcrepe.load(tmp_path, split="replace_rel")
    (tmp_path / "replace_rel.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sugarcrepe.load(tmp_path, split="replace_rel")


def test_image_root(tmp_path, make_image):
    _write(tmp_path / "sugar", make_image)
    (tmp_path / "sugar" / "val2017").rename(tmp_path / "coco_val2017")
    with pytest.raises(ValueError, match=r"swap_att.json, key '0': `filename` names an image not found"):
        sugarcrepe.load(tmp_path / "sugar")
    items = sugarcrepe.load(tmp_path / "sugar", image_root=tmp_path / "coco_val2017")
    assert items[0].image == str(tmp_path / "coco_val2017" / "000000000000.jpg")
    with pytest.raises(ValueError, match="does not exist"):
        sugarcrepe.load(tmp_path / "sugar", image_root=tmp_path / "nowhere")
