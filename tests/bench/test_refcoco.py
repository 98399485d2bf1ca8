"""RefCOCO loaders on fixtures in the official release formats: refer's pickled `refs(<splitBy>).p` + COCO
`instances.json`, MAttNet / COCO-results detections, and the simple JSONL layout."""

import json
import pickle

import pytest

from vcontrast.bench import refcoco
from vcontrast.bench.metrics import compute_metrics
from vcontrast.bench.registry import get_benchmark

IMAGE_ID = 581857
INSTANCES = {
    "images": [{"id": IMAGE_ID, "file_name": "COCO_train2014_000000581857.jpg", "width": 64, "height": 48}],
    "annotations": [
        {"id": 1, "image_id": IMAGE_ID, "bbox": [0, 0, 10, 20], "category_id": 1, "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": IMAGE_ID, "bbox": [30, 10, 20, 20], "category_id": 1, "area": 400, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
}


def _sentence(sent_id, sent):
    return {"tokens": sent.split(), "raw": sent.capitalize(), "sent_id": sent_id, "sent": sent}


# refer's refs(unc).p: a list of ref dicts with these keys
REFS = [
    {
        "sent_ids": [0, 1],
        "file_name": "COCO_train2014_000000581857_2.jpg",
        "ann_id": 2,
        "ref_id": 0,
        "image_id": IMAGE_ID,
        "split": "testA",
        "sentences": [_sentence(0, "man on right"), _sentence(1, "right guy")],
        "category_id": 1,
    },
    {
        "sent_ids": [2],
        "file_name": "COCO_train2014_000000581857_1.jpg",
        "ann_id": 1,
        "ref_id": 1,
        "image_id": IMAGE_ID,
        "split": "val",
        "sentences": [_sentence(2, "left")],
        "category_id": 1,
    },
]


def write_refer(root, make_image, dataset="refcoco", split_by="unc", refs=REFS, instances=INSTANCES, image=True):
    """refer's data/ folder: <dataset>/instances.json, <dataset>/refs(<split_by>).p (pickle protocol 2, as the
    Python 2 release), images/mscoco/images/train2014/."""
    (root / dataset).mkdir(parents=True, exist_ok=True)
    (root / dataset / "instances.json").write_text(json.dumps(instances))
    with (root / dataset / f"refs({split_by}).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    if image:
        make_image(root / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000581857.jpg", (64, 48))
    return root


def test_load_refer_pickle_gt_proposals(tmp_path, make_image):
    write_refer(tmp_path, make_image)
    items = refcoco.load(tmp_path, split="testA")
    assert [it.id for it in items] == ["testA/0_0", "testA/0_1"]
    it = items[0]
    assert it.task == "refexp" and it.prompt == "man on right"
    assert it.target == (30.0, 10.0, 50.0, 30.0)
    assert it.proposals == [(0.0, 0.0, 10.0, 20.0), (30.0, 10.0, 50.0, 30.0)] and it.answer == 1
    assert it.image.endswith("train2014/COCO_train2014_000000581857.jpg")
    assert it.meta["split_by"] == "unc" and it.meta["proposals"] == "gt"
    assert [i.id for i in get_benchmark("refcoco").load(tmp_path)] == ["val/1_2"]  # default split val
    assert len(refcoco.load(tmp_path, split="testA", limit=1)) == 1
    assert refcoco.load(tmp_path, split="testA", proposals=None)[0].proposals == []

    preds = {"testA/0_0": {"pred_index": 1}, "testA/0_1": {"scores": [0.9, 0.1]}}
    assert compute_metrics("refcoco", items, preds) == {"acc@0.5": 0.5, "oracle@0.5": 1.0, "random@0.5": 0.5}


def test_python2_byte_strings_are_read(tmp_path):
    # protocol 2 as Python 2 writes a list holding one str: SHORT_BINSTRING (b"U"), which Python 3 returns decoded
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02]q\x00U\x05caf\xc3\xa9q\x01a.")
    assert refcoco.read_plain_pickle(path, "refcoco") == ["café"]
    path.write_bytes(b"\x80\x02]q\x00U\x04caf\xe9q\x01a.")  # not UTF-8: Latin-1
    assert refcoco.read_plain_pickle(path, "refcoco") == ["café"]


def test_pickle_with_objects_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "x": Evil()}], protocol=2))
    with pytest.raises(ValueError, match=r"not a plain-data pickle \(it references (__builtin__|builtins).print"):
        refcoco.read_plain_pickle(path, "refcoco")
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="refusing to read it"):
        refcoco.read_plain_pickle(path, "refcoco")


@pytest.mark.parametrize(
    ("dataset", "split_by", "split"),
    [
        ("refcoco", "google", "test"),
        ("refcocog", "umd", "test"),
        ("refcocog", "google", "val"),
        ("refcoco+", "unc", "testB"),
    ],
)
def test_every_split_by(tmp_path, make_image, dataset, split_by, split):
    refs = [{**REFS[0], "split": split}]
    write_refer(tmp_path, make_image, dataset=dataset, split_by=split_by, refs=refs)
    items = get_benchmark(dataset).load(tmp_path, split=split, split_by=split_by)
    assert [it.id for it in items] == [f"{split}/0_0", f"{split}/0_1"]
    assert items[0].meta["dataset"] == dataset and items[0].meta["split_by"] == split_by


def test_split_by_checks(tmp_path, make_image):
    write_refer(tmp_path, make_image, dataset="refcocog", split_by="umd")
    with pytest.raises(ValueError, match=r"`split_by` \(='unc'\) must be one of umd, google"):
        refcoco.load(tmp_path, dataset="refcocog", split_by="unc")
    with pytest.raises(
        ValueError, match=r"missing file .*refs\(google\).p \(split_by 'google'; found \['refs\(umd\).p'\]"
    ):
        refcoco.load(tmp_path, dataset="refcocog", split_by="google")
    with pytest.raises(ValueError, match="unknown split 'testA'; splits are train, val, test"):
        refcoco.load(tmp_path, split="testA", dataset="refcocog")


def test_mattnet_and_coco_results_detections(tmp_path, make_image):
    write_refer(tmp_path, make_image, dataset="refcocog", split_by="umd")
    other_image = {"det_id": 9, "box": [30, 10, 20, 20], "image_id": 1, "category_id": 1, "score": 0.99}
    mattnet = [
        {"det_id": 1, "box": [29, 9, 20, 20], "image_id": IMAGE_ID, "category_id": 1, "score": 0.9},
        {"det_id": 2, "box": [0, 0, 9, 19], "image_id": IMAGE_ID, "category_id": 1, "score": 0.8},
        other_image,
    ]
    coco_results = [
        {"image_id": d["image_id"], "category_id": 1, "bbox": d["box"], "score": d["score"]} for d in mattnet
    ]
    for name, dets in (("res101_coco_minus_refer_notime_dets.json", mattnet), ("results.json", coco_results)):
        (tmp_path / name).write_text(json.dumps(dets))
        # data_dir = the dataset folder itself; only the val ref (target = annotation 1 = (0, 0, 10, 20))
        items = refcoco.load(tmp_path / "refcocog", split="val", dataset="refcocog", proposals=tmp_path / name)
        assert len(items) == 1 and items[0].proposals == [(29.0, 9.0, 49.0, 29.0), (0.0, 0.0, 9.0, 19.0)]
        assert items[0].answer == 1 and items[0].meta["proposals"] == str(tmp_path / name)
        out = compute_metrics("refcocog", items, {items[0].id: {"pred_index": 0}})
        # chose the wrong detection; one of two detections hits the target
        assert out == {"acc@0.5": 0.0, "oracle@0.5": 1.0, "random@0.5": 0.5}


def test_image_root(tmp_path, make_image):
    write_refer(tmp_path / "refer", make_image, image=False)
    with pytest.raises(ValueError, match=r"refs\(unc\).p, entry 1: `image_id` names an image not found"):
        refcoco.load(tmp_path / "refer")
    make_image(tmp_path / "coco" / "train2014" / "COCO_train2014_000000581857.jpg")
    items = refcoco.load(tmp_path / "refer", image_root=tmp_path / "coco" / "train2014")
    assert items[0].image == str(tmp_path / "coco" / "train2014" / "COCO_train2014_000000581857.jpg")


def test_refs_json_still_read(tmp_path, make_image):
    write_refer(tmp_path, make_image)
    (tmp_path / "refcoco" / "refs(unc).p").unlink()
    (tmp_path / "refcoco" / "refs(unc).json").write_text(json.dumps(REFS))
    assert [it.id for it in refcoco.load(tmp_path, split="testA")] == ["testA/0_0", "testA/0_1"]


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
    assert out == {"acc@0.5": 1.0, "oracle@0.5": 1.0, "random@0.5": 0.5}  # "val/x" has no proposals to rate


def test_missing_and_bad(tmp_path, make_image):
    with pytest.raises(ValueError, match="does not exist"):
        refcoco.load(tmp_path / "none")
    (tmp_path / "refcoco").mkdir()
    with pytest.raises(ValueError, match=r"missing file .*refs\(unc\).p"):
        refcoco.load(tmp_path)
    write_refer(tmp_path, make_image)
    (tmp_path / "refcoco" / "instances.json").unlink()
    with pytest.raises(ValueError, match="missing file .*instances.json"):
        refcoco.load(tmp_path)
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(INSTANCES))
    with pytest.raises(ValueError, match="proposals file 'dets.json' does not exist"):
        refcoco.load(tmp_path, proposals="dets.json")
    with pytest.raises(ValueError, match="`dataset`"):
        refcoco.load(tmp_path, dataset="refclef")
    with pytest.raises(ValueError, match="option.* proposals do not apply to this benchmark"):
        get_benchmark("seetrue").load(tmp_path, proposals="gt")


def test_boxes_in_the_wrong_format_are_refused_at_load(tmp_path, make_image):
    # xywh boxes in the xyxy layout scored acc@0.5 0.0 silently
    make_image(tmp_path / "img" / "a.png", size=(64, 48))
    row = {"image": "img/a.png", "expression": "the cup", "target": [20, 26, 15, 15], "proposals": [[20, 26, 35, 41]]}
    (tmp_path / "val.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(
        ValueError,
        match=r"refcoco: .*val.jsonl, line 1: `target` box \[20, 26, 15, 15\] is inverted.*COCO's \[x, y, w, h\]\?",
    ):
        refcoco.load(tmp_path)
    row = {**row, "target": [20, 26, 35, 41], "proposals": [[20, 26, 35, 41], [5, 5, 5, 9]]}
    (tmp_path / "val.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"line 1: `proposals\[1\]` box \[5, 5, 5, 9\] has zero area"):
        refcoco.load(tmp_path)

    refer = tmp_path / "refer"
    bad = {**INSTANCES, "annotations": [{**INSTANCES["annotations"][0], "bbox": [0, 0, -10, 20]}]}
    write_refer(refer, make_image, instances=bad)
    with pytest.raises(
        ValueError, match=r"annotations\[0\]: `bbox` \(=\[0, 0, -10, 20\]\) must have a positive width"
    ):
        refcoco.load(refer, split="val")
    write_refer(refer, make_image)
    dets = [{"det_id": 0, "box": [30, 10, 0, 20], "image_id": IMAGE_ID, "score": 1.0}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    with pytest.raises(ValueError, match=r"dets.json, entry 0: `box` \(=\[30, 10, 0, 20\]\) must have a positive"):
        refcoco.load(refer, split="val", proposals=tmp_path / "dets.json")


def test_detections_without_an_entry_for_an_image_are_refused(tmp_path, make_image):
    # The reported failure: such items silently took the region proposer's boxes (or the whole image) instead.
    write_refer(tmp_path, make_image)
    dets = [{"det_id": 9, "box": [30, 10, 20, 20], "image_id": 1, "category_id": 1, "score": 0.99}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    with pytest.raises(
        ValueError,
        match=rf"refcoco: the detections file .*dets.json has no detection for 1 of the 1 images of split "
        rf"'testA' \(image ids {IMAGE_ID}\); .*--proposals gt / proposer",
    ):
        refcoco.load(tmp_path, split="testA", proposals=tmp_path / "dets.json")
    dets.append({**dets[0], "image_id": IMAGE_ID})
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    items = refcoco.load(tmp_path, split="testA", proposals=tmp_path / "dets.json", limit=1)
    assert len(items) == 1 and items[0].proposals == [(30.0, 10.0, 50.0, 30.0)]
