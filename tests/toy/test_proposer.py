"""The toy proposer: objects found from the pixels against the scene's ground truth, and phrase matching."""

import pytest
from PIL import Image

from vcontrast.crg.proposals import PROPOSERS, Proposal, get_proposer, propose_regions
from vcontrast.regions import blackout
from vcontrast.toy.proposer import ToyProposer, detect_objects, match_phrase
from vcontrast.toy.scenes import make_scene
from vcontrast.toy.tasks import build_task


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("with_text", [False, True])
def test_objects_found_from_pixels_match_the_ground_truth(with_text):
    found = total = right_attributes = extra = 0
    for seed in range(100):
        image, scene = make_scene(seed, with_text=with_text)
        objects = [d for d in detect_objects(image) if d.kind == "object"]
        extra += max(0, len(objects) - len(scene.objects))
        for obj in scene.objects:
            total += 1
            best = max(objects, key=lambda d: _iou(d.box, obj.box))
            if _iou(best.box, obj.box) >= 0.9:
                found += 1
                right_attributes += (best.color, best.shape, best.size_word) == (obj.color, obj.shape, obj.size_word)
    assert found >= 0.95 * total
    assert right_attributes >= 0.95 * total
    assert extra == 0  # glyphs of rendered text are not taken for shapes


def test_text_and_region_outline_are_found():
    texts = outlines = 0
    for seed in range(40):
        image, scene = make_scene(seed, with_text=True)
        (truth,) = scene.texts
        found = [d for d in detect_objects(image) if d.kind == "text"]
        texts += any(_iou(d.box, truth.box) >= 0.5 and d.color == truth.color for d in found)
        image, item = build_task("region_vqa", seed)
        found = [d for d in detect_objects(image) if d.kind == "outline"]
        outlines += [d.box for d in found] == [tuple(int(v) for v in item.regions[0])]
    assert texts >= 38 and outlines == 40


def test_phrases_select_objects_by_colour_shape_and_size():
    image, scene = make_scene(3, n_objects=2)  # an orange circle and a red triangle, both small
    detections = detect_objects(image)
    by_name = {(o.color, o.shape): o.box for o in scene.objects}
    assert [d.box for d in match_phrase("the orange circle", detections)] == [by_name["orange", "circle"]]
    assert [d.box for d in match_phrase("triangles", detections)] == [by_name["red", "triangle"]]
    assert [d.box for d in match_phrase("red object", detections)] == [by_name["red", "triangle"]]
    assert match_phrase("blue square", detections) == []
    assert match_phrase("large triangle", detections) == []
    assert len(match_phrase("small", detections)) == 2
    assert {d.box for d in match_phrase("object", detections)} == set(by_name.values())  # no attribute: all objects
    assert {d.box for d in match_phrase("box", detections)} == set(by_name.values())  # no outline drawn: all objects


def test_box_phrase_names_the_drawn_outline():
    image, item = build_task("region_vqa", 0)
    outline = tuple(int(v) for v in item.regions[0])
    assert [d.box for d in match_phrase("box", detect_objects(image))] == [outline]


def test_registered_proposer_follows_the_protocol():
    assert "toy" in PROPOSERS
    image, _ = make_scene(3, n_objects=2)
    proposals = propose_regions(image, "is the orange circle left of the red triangle ?", detector="toy")
    assert all(isinstance(p, Proposal) for p in proposals)
    assert [(p.phrase, p.box) for p in proposals] == [
        ("orange circle", (63.0, 46.0, 77.0, 60.0)),
        ("red triangle", (5.0, 32.0, 18.0, 45.0)),
    ]
    # a box named by two phrases comes back once; nothing for an absent thing or an empty image
    assert len(ToyProposer()(image, ["circle", "orange circle", "green square"])) == 1
    assert ToyProposer()(Image.new("RGB", (64, 64), (170, 170, 170)), ["object"]) == []
    with pytest.raises(ValueError, match="no options"):
        get_proposer("toy", threshold=0.3)
    with pytest.raises(ValueError, match="list of phrases"):
        ToyProposer()(image, "circle")


def test_blacked_out_regions_are_not_objects():
    image, scene = make_scene(5, n_objects=3)
    masked = blackout(image, [scene.objects[0].box])
    boxes = [d.box for d in detect_objects(masked)]
    assert scene.objects[0].box not in boxes
    assert sorted(boxes) == sorted(o.box for o in scene.objects[1:])
