"""RefCOCO loaders: refer layout (instances.json + refs JSON) and the simple JSONL layout."""

import json

import pytest

from vcontrast.bench import refcoco
from vcontrast.bench.metrics import compute_metrics
from vcontrast.bench.registry import get_benchmark

INSTANCES = {
    "images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 64, "height": 48}],
    "annotations": [
        {"id": 1, "image_id": 581857, "bbox": [0, 0, 10, 20], "category_id": 1},
        {"id": 2, "image_id": 581857, "bbox": [30, 10, 20, 20], "category_id": 1},
    ],
    "categories": [{"id": 1, "name": "person"}],
}
REFS = [
    {
        "ref_id": 0,
        "ann_id": 2,
        "image_id": 581857,
        "split": "testA",
        "category_id": 1,
        "sentences": [
            {"sent_id": 0, "sent": "man on right", "raw": "Man on right"},
            {"sent_id": 1, "sent": "right guy"},
        ],
    },
    {
        "ref_id": 1,
        "ann_id": 1,
        "image_id": 581857,
        "split": "val",
        "category_id": 1,
        "sentences": [{"sent_id": 2, "sent": "left"}],
    },
]


def _write_refer(root, make_image, dataset="refcoco", refs_name="refs(unc).json"):
    (root / dataset).mkdir(parents=True, exist_ok=True)
    (root / dataset / "instances.json").write_text(json.dumps(INSTANCES))
    (root / dataset / refs_name).write_text(json.dumps(REFS))
    make_image(root / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000581857.jpg", (64, 48))


def test_load_refer_layout_gt_proposals(tmp_path, make_image):
    _write_refer(tmp_path, make_image)
    items = refcoco.load(tmp_path, split="testA")
    assert [it.id for it in items] == ["testA/0_0", "testA/0_1"]
    it = items[0]
    assert it.task == "refexp" and it.prompt == "man on right"
    assert it.target == (30.0, 10.0, 50.0, 30.0)
    assert it.proposals == [(0.0, 0.0, 10.0, 20.0), (30.0, 10.0, 50.0, 30.0)] and it.answer == 1
    assert it.image.endswith("train2014/COCO_train2014_000000581857.jpg")
    assert [i.id for i in get_benchmark("refcoco").load(tmp_path)] == ["val/1_2"]  # default split val
    assert len(refcoco.load(tmp_path, split="testA", limit=1)) == 1
    assert refcoco.load(tmp_path, split="testA", proposals=None)[0].proposals == []

    preds = {"testA/0_0": {"pred_index": 1}, "testA/0_1": {"scores": [0.9, 0.1]}}
    assert compute_metrics("refcoco", items, preds) == {"acc@0.5": 0.5}


def test_detection_proposals_and_dataset_folder(tmp_path, make_image):
    _write_refer(tmp_path, make_image, dataset="refcocog", refs_name="refs(umd).json")
    dets = [{"image_id": 581857, "bbox": [29, 9, 20, 20], "score": 0.9}, {"image_id": 581857, "bbox": [0, 0, 5, 5]}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    # refs split "testA" does not exist in refcocog -> only the val ref; data_dir = the dataset folder itself
    items = refcoco.load(tmp_path / "refcocog", split="val", dataset="refcocog", proposals=tmp_path / "dets.json")
    assert len(items) == 1 and items[0].proposals[0] == (29.0, 9.0, 49.0, 29.0)
    assert items[0].answer is None  # best IoU with the target (0, 0, 10, 20) is 0.125 < 0.5
    with pytest.raises(ValueError, match="unknown split 'testA'"):
        refcoco.load(tmp_path, split="testA", dataset="refcocog")


def test_jsonl_layout(tmp_path, make_image):
    make_image(tmp_path / "img" / "a.png")
    rows = [
        {
            "image": "img/a.png",
            "expression": "the red cup",
            "target": [0, 0, 4, 4],
            "proposals": [[5, 5, 8, 8], [0, 0, 4, 5]],
        },
        {"id": "x", "image": "img/a.png", "expression": "blue one", "target": [1, 1, 2, 2]},
    ]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    items = get_benchmark("refcoco+").load(tmp_path, split="val")
    assert [it.id for it in items] == ["val/1", "val/x"]
    assert items[0].answer == 1 and items[0].image == str(tmp_path / "img" / "a.png")
    assert items[1].proposals == [] and items[1].answer is None
    out = compute_metrics("refcoco+", items, {"val/1": {"pred_index": 1}, "val/x": {"pred_box": [1, 1, 2, 2]}})
    assert out == {"acc@0.5": 1.0}


def test_missing_and_bad(tmp_path, make_image):
    with pytest.raises(ValueError, match="does not exist"):
        refcoco.load(tmp_path / "none")
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match=r"(?s)missing file .*refs\(unc\).json \(found the pickle"):
        refcoco.load(tmp_path)
    (tmp_path / "refcoco" / "refs(unc).json").write_text(json.dumps(REFS))
    with pytest.raises(ValueError, match="missing file .*instances.json"):
        refcoco.load(tmp_path)
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(INSTANCES))
    with pytest.raises(ValueError, match="image not found"):
        refcoco.load(tmp_path)
    with pytest.raises(ValueError, match="`proposals`"):
        refcoco.load(tmp_path, proposals="dets.json")
    with pytest.raises(ValueError, match="`dataset`"):
        refcoco.load(tmp_path, dataset="refclef")
    (tmp_path / "val.jsonl").write_text(json.dumps({"image": "a.png", "expression": "x"}))
    with pytest.raises(ValueError, match="needs keys image, expression, target"):
        refcoco.load(tmp_path)
