"""ViP-Bench loader on a fixture in the mucai/ViP-Bench layout, and the grader's result file."""

import json

import pytest

from vcontrast.bench import vipbench
from vcontrast.bench.metrics import compute_metrics

META = {
    "v1_0": {
        "image_source": "v1_1.png",
        "image": "v1_1_0.png",
        "question": "What is the value of the variable in the equation <obj>?",
        "answer": "0.75<OR>x=0.75<OR>3/4",
        "capability": ["ocr", "math"],
    },
    "v1_1": {
        "image_source": "v1_2.jpg",
        "image": "v1_2_1.png",
        "question": "Is <obj1> bigger than <obj2>?",
        "answer": "yes",
        "capability": ["rec"],
    },
}


def _write(root, make_image, with_source=True):
    (root / "vip-bench-meta-data.json").write_text(json.dumps(META))
    for split, words in (("bbox", "red rectangle"), ("human", "red arrow")):
        lines = []
        for qid, key in enumerate(META):
            make_image(root / split / "images" / META[key]["image"])
            text = META[key]["question"].replace("<obj>", f"within the {words}")
            lines.append(json.dumps({"question_id": qid, "image": META[key]["image"], "text": text, "category": "x"}))
        (root / split / "questions.jsonl").write_text("\n".join(lines) + "\n")
    if with_source:
        make_image(root / "source_image" / "v1_1.png")
        rect = {"label": "obj", "points": [[10, 20], [4, 2]], "shape_type": "rectangle"}
        (root / "source_image" / "v1_1.json").write_text(json.dumps({"shapes": [rect], "imagePath": "v1_1.png"}))
        shapes = [
            {"label": "obj2", "points": [[1, 1], [5, 2], [3, 7]], "shape_type": "polygon"},
            {"label": "obj1", "points": [[0, 0], [2, 2]], "shape_type": "rectangle"},
        ]
        (root / "source_image" / "v1_2.json").write_text(json.dumps({"shapes": shapes}))


def test_load(tmp_path, make_image):
    _write(tmp_path, make_image)
    items = vipbench.load(tmp_path, split="bbox")
    assert [it.id for it in items] == ["bbox/v1_0", "bbox/v1_1"]
    first = items[0]
    assert first.task == "region_vqa" and first.answer == "0.75<OR>x=0.75<OR>3/4"
    assert first.prompt == "What is the value of the variable in the equation within the red rectangle?"
    assert first.image == str(tmp_path / "bbox" / "images" / "v1_1_0.png")
    assert first.regions == [(4.0, 2.0, 10.0, 20.0)]
    assert first.meta["grader_key"] == "v1_0" and first.meta["capability"] == ["ocr", "math"]
    assert items[1].regions == [(0.0, 0.0, 2.0, 2.0), (1.0, 1.0, 5.0, 7.0)]  # order of <obj1>, <obj2>
    both = vipbench.load(tmp_path, limit=1)
    assert [it.id for it in both] == ["bbox/v1_0", "human/v1_0"]
    assert compute_metrics("vipbench", both, {it.id: {"text": "x"} for it in both}) == {}


def test_no_source_annotations_gives_empty_regions(tmp_path, make_image):
    _write(tmp_path, make_image, with_source=False)
    assert all(it.regions == [] for it in vipbench.load(tmp_path, split="human"))


def test_write_predictions_in_grader_format(tmp_path, make_image):
    _write(tmp_path, make_image)
    items = vipbench.load(tmp_path, split="bbox")
    path = vipbench.write_vipbench_predictions(
        items, {"bbox/v1_0": {"text": "x = 0.75"}, "bbox/v1_1": "yes"}, tmp_path / "results" / "m-bbox.json"
    )
    assert json.loads(path.read_text()) == {"v1_0": "x = 0.75", "v1_1": "yes"}
    with pytest.raises(ValueError, match="write one file per split"):
        vipbench.write_vipbench_predictions(vipbench.load(tmp_path), {}, tmp_path / "x.json")
    with pytest.raises(ValueError, match="no prediction"):
        vipbench.write_vipbench_predictions(items, {}, tmp_path / "x.json")
    with pytest.raises(ValueError, match="must be a string"):
        vipbench.write_vipbench_predictions(items, {it.id: {"scores": [1]} for it in items}, tmp_path / "x.json")


def test_missing_and_bad(tmp_path, make_image):
    with pytest.raises(ValueError, match="missing file .*vip-bench-meta-data.json"):
        vipbench.load(tmp_path)
    _write(tmp_path, make_image)
    (tmp_path / "human" / "questions.jsonl").unlink()
    with pytest.raises(ValueError, match="missing file .*human/questions.jsonl"):
        vipbench.load(tmp_path, split="human")
    (tmp_path / "human" / "questions.jsonl").write_text(json.dumps({"question_id": 7, "image": "a", "text": "q"}))
    with pytest.raises(ValueError, match=r"questions.jsonl, line 1: `question_id` \('v1_7'\) is not in"):
        vipbench.load(tmp_path, split="human")
