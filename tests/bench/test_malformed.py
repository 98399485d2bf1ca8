"""Every malformed row of every loader gives a ValueError naming the file, the row as the file counts it (line
number, entry index or key) and the field. Fixtures in each benchmark's official format, one defect each."""

import copy
import csv
import json

import pytest

from tests.bench.test_refcoco import INSTANCES, REFS, write_refer
from vcontrast.bench import refcoco, seetrue, sugarcrepe, vipbench, whatsup


def test_refcoco_ref_without_ann_id(tmp_path, make_image):
    refs = copy.deepcopy(REFS)
    del refs[1]["ann_id"]
    write_refer(tmp_path, make_image, refs=refs)
    with pytest.raises(ValueError, match=r"refcoco: .*refs\(unc\).p, entry 1: `ann_id` is missing"):
        refcoco.load(tmp_path, split="val")


def test_refcoco_ref_pointing_to_unknown_annotation(tmp_path, make_image):
    refs = copy.deepcopy(REFS)
    refs[1]["ann_id"] = 99
    write_refer(tmp_path, make_image, refs=refs)
    with pytest.raises(ValueError, match=r"entry 1: `ann_id` \(=99\) is not an annotation of .*instances.json"):
        refcoco.load(tmp_path, split="val")


def test_refcoco_annotation_without_bbox(tmp_path, make_image):
    instances = copy.deepcopy(INSTANCES)
    del instances["annotations"][1]["bbox"]
    write_refer(tmp_path, make_image, instances=instances)
    with pytest.raises(ValueError, match=r"refcoco: .*instances.json, annotations\[1\]: `bbox` is missing"):
        refcoco.load(tmp_path)


def test_refcoco_bbox_of_three_numbers(tmp_path, make_image):
    instances = copy.deepcopy(INSTANCES)
    instances["annotations"][0]["bbox"] = [0, 0, 10]
    write_refer(tmp_path, make_image, instances=instances)
    with pytest.raises(
        ValueError, match=r"annotations\[0\]: `bbox` \(=\[0, 0, 10\]\) must be 4 numbers \[x, y, w, h\]"
    ):
        refcoco.load(tmp_path)


def test_refcoco_sentence_without_text(tmp_path, make_image):
    refs = copy.deepcopy(REFS)
    refs[0]["sentences"][1]["sent"] = ""
    refs[0]["sentences"][1]["raw"] = ""
    write_refer(tmp_path, make_image, refs=refs)
    with pytest.raises(ValueError, match=r"refs\(unc\).p, entry 0: `sentences\[1\].sent` \(=''\) must be a non-empty"):
        refcoco.load(tmp_path, split="testA")


def test_refcoco_detection_without_box(tmp_path, make_image):
    write_refer(tmp_path, make_image)
    dets = [{"det_id": 0, "box": [0, 0, 1, 1], "image_id": 581857}, {"det_id": 1, "image_id": 581857, "score": 1}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    with pytest.raises(
        ValueError, match=r"dets.json, entry 1: `box` \(MAttNet\) or `bbox` \(COCO results\) is missing"
    ):
        refcoco.load(tmp_path, proposals=tmp_path / "dets.json")
    dets[1]["box"], dets[1]["image_id"] = [0, 0, 1, 1], "581857"
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    with pytest.raises(ValueError, match=r"entry 1: `image_id` \(='581857'\) must be an integer"):
        refcoco.load(tmp_path, proposals=tmp_path / "dets.json")


def test_refcoco_jsonl_target_of_three_numbers(tmp_path, make_image):
    make_image(tmp_path / "a.png")
    rows = [{"image": "a.png", "expression": "cup", "target": [0, 0, 4, 4]}, {"image": "a.png", "expression": "x"}]
    rows.append({"image": "a.png", "expression": "cup", "target": [0, 0, 4]})
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in [rows[0], rows[2]]))
    with pytest.raises(ValueError, match=r"val.jsonl, line 2: `target` \(=\[0, 0, 4\]\) must be 4 numbers"):
        refcoco.load(tmp_path)
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]))
    with pytest.raises(ValueError, match=r"val.jsonl, line 2: `target` is missing"):
        refcoco.load(tmp_path)


def test_whatsup_non_integer_image_id(tmp_path, make_image):
    make_image(tmp_path / "val2017" / "000000000139.jpg")
    records = [[139, "A dog on the left", "A dog on the right"], ["dog", "A cat on a table", "A cat under a table"]]
    (tmp_path / "coco_qa_one_obj.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"coco_qa_one_obj.json, entry 1: `image_id` \(='dog', first element\)"):
        whatsup.load(tmp_path)


def test_whatsup_controlled_entry_without_captions(tmp_path, make_image):
    make_image(tmp_path / "controlled_images" / "mug_on_table.jpeg")
    record = {"image_path": "data/controlled_images/mug_on_table.jpeg", "caption_options": ["A mug on a table"]}
    (tmp_path / "controlled_images_dataset.json").write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=r"controlled_images_dataset.json, entry 0: `caption_options`"):
        whatsup.load(tmp_path)
    record["caption_options"].append("A mug under a table")
    record["image_path"] = "data/controlled_images/cup_on_table.jpeg"
    (tmp_path / "controlled_images_dataset.json").write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=r"entry 0: `image_path` names an image not found"):
        whatsup.load(tmp_path)


def _write_vip(root, make_image, meta, shapes):
    (root / "vip-bench-meta-data.json").write_text(json.dumps(meta))
    make_image(root / "bbox" / "images" / "v1_1_0.png")
    question = {"question_id": 0, "image": "v1_1_0.png", "text": "What is within the red box?"}
    (root / "bbox" / "questions.jsonl").write_text(json.dumps(question) + "\n")
    make_image(root / "source_image" / "v1_1.png")
    (root / "source_image" / "v1_1.json").write_text(json.dumps({"shapes": shapes}))


VIP_META = {"v1_0": {"image_source": "v1_1.png", "image": "v1_1_0.png", "question": "What is <obj>?", "answer": "a"}}
RECT = {"label": "obj", "points": [[1, 2], [5, 6]], "shape_type": "rectangle"}


def test_vipbench_meta_entry_without_answer(tmp_path, make_image):
    meta = copy.deepcopy(VIP_META)
    del meta["v1_0"]["answer"]
    _write_vip(tmp_path, make_image, meta, [RECT])
    with pytest.raises(ValueError, match=r"vip-bench-meta-data.json, key 'v1_0': `answer` \(=None\) must be"):
        vipbench.load(tmp_path, split="bbox")


@pytest.mark.parametrize("points", [[[1, 2]], [[1, 2], [3]], [[1, 2], ["a", 4]], "1,2,3,4"])
def test_vipbench_bad_labelme_points(tmp_path, make_image, points):
    _write_vip(
        tmp_path, make_image, VIP_META, [{"label": "x", "points": [[0, 0], [1, 1]]}, {**RECT, "points": points}]
    )
    with pytest.raises(ValueError, match=r"source_image/v1_1.json, shapes\[1\]: `points` .* must be two or more"):
        vipbench.load(tmp_path, split="bbox")


def test_vipbench_question_without_text(tmp_path, make_image):
    _write_vip(tmp_path, make_image, VIP_META, [RECT])
    (tmp_path / "bbox" / "questions.jsonl").write_text(
        json.dumps({"question_id": 0, "image": "v1_1_0.png", "text": ""})
    )
    with pytest.raises(ValueError, match=r"bbox/questions.jsonl, line 1: `text` \(=''\)"):
        vipbench.load(tmp_path, split="bbox")


def _write_seetrue(root, make_image, rows, name="SeeTRUE.csv"):
    with (root / name).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "label", "original_dataset_id", "dataset_source"])
        for row in rows:
            make_image(root / "images" / "a.png")
            w.writerow(row)


def test_seetrue_bad_label_and_empty_text_name_the_line(tmp_path, make_image):
    _write_seetrue(tmp_path, make_image, [("a.png", "a dog", 1, "1", "COCO"), ("a.png", "a cat", "yes", "2", "COCO")])
    with pytest.raises(ValueError, match=r"SeeTRUE.csv, line 3: `label` \(='yes'\) must be 0 or 1"):
        seetrue.load(tmp_path)
    _write_seetrue(tmp_path, make_image, [("a.png", "", 1, "1", "COCO")])
    with pytest.raises(ValueError, match=r"SeeTRUE.csv, line 2: `text` \(=''\) must be a non-empty string"):
        seetrue.load(tmp_path)
    _write_seetrue(tmp_path, make_image, [("a.png", "a dog", 1, "1", "COCO"), ("b.png", "a cat", 0, "2", "COCO")])
    with pytest.raises(ValueError, match=r"SeeTRUE.csv, line 3: `image` names an image not found"):
        seetrue.load(tmp_path)


def test_sugarcrepe_entry_without_filename(tmp_path, make_image):
    make_image(tmp_path / "val2017" / "1.jpg")
    data = {
        "7": {"filename": "1.jpg", "caption": "a", "negative_caption": "b"},
        "9": {"caption": "a", "negative_caption": "b"},
    }
    (tmp_path / "swap_att.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"swap_att.json, key '9': `filename` \(=None\) must be a non-empty string"):
        sugarcrepe.load(tmp_path)
    data["9"]["filename"] = "2.jpg"
    (tmp_path / "swap_att.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"swap_att.json, key '9': `filename` names an image not found"):
        sugarcrepe.load(tmp_path)
