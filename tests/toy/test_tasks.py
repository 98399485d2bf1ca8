from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vcontrast.bench.items import read_items
from vcontrast.toy.grammar import (
    POSITIONS,
    RELATIONS,
    caption,
    position,
    relation,
    relational_name,
    relations_text,
    vocabulary,
    words,
)
from vcontrast.toy.pairs import instruction_pairs
from vcontrast.toy.scenes import COLORS, SHAPES, SIZES, TEXTS, Obj, Scene, TextItem, make_scene
from vcontrast.toy.tasks import BIASES, TASK_NAMES, build_task, iter_split, make_split


def _obj(color, shape, box, size_word="small"):
    return Obj(color, shape, size_word, box)


def _inside(box, size):
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size


@pytest.mark.parametrize("split", ["train", "test", "val"])
@pytest.mark.parametrize("task", list(TASK_NAMES))
def test_make_split_round_trips(task, split, tmp_path):
    path = make_split(task, 8, seed=1, split=split, out_dir=tmp_path)
    items = list(read_items(path))
    assert len(items) == 8 and len({i.id for i in items}) == 8
    for item in items:
        scene = Scene.from_dict(item.meta["scene"])
        assert item.task == TASK_NAMES[task] and item.meta["split"] == split and item.prompt
        assert Image.open(item.image).size == (scene.size, scene.size)
        assert all(_inside(r, scene.size) for r in item.regions)
        boxes = {o.box for o in scene.objects} | {t.box for t in scene.texts}
        if item.task in ("caption", "vqa"):
            assert isinstance(item.answer, str) and set(item.regions) <= boxes and item.regions
        if item.task == "region_vqa":
            assert len(item.regions) == 1 and isinstance(item.answer, str)
        if item.task == "choice":
            assert 0 <= item.answer < len(item.candidates) == len(set(item.candidates)) and item.regions
        if item.task == "refexp":
            assert not item.regions and 0 <= item.answer < len(item.proposals)
            assert item.proposals[item.answer] == item.target and set(item.proposals) == boxes
        if item.task == "match":
            assert item.label in (0, 1) and item.answer is None and item.regions


def test_build_task_is_deterministic_and_splits_differ():
    for task in TASK_NAMES:
        (a, ia), (b, ib) = build_task(task, 5, "test"), build_task(task, 5, "test")
        assert a.tobytes() == b.tobytes() and ia == ib
        assert build_task(task, 5, "train")[1].meta["scene_seed"] != ia.meta["scene_seed"]
        assert build_task(task, 5, "val")[1].meta["scene_seed"] != ia.meta["scene_seed"]


def _answers_hold(item):
    # The gold answer is true of the scene ground truth.
    scene = Scene.from_dict(item.meta["scene"])
    by_box = {o.box: o for o in scene.objects}
    kind = item.meta["kind"]
    if item.task == "vqa" and kind in ("color", "shape"):
        assert getattr(by_box[item.regions[0]], kind) == item.answer
    if item.task == "vqa" and kind == "count":
        assert item.answer == str(len(scene.objects))
    if item.task == "vqa" and kind == "text":
        assert item.answer == scene.texts[0].text
    if item.task == "choice" and kind == "relation":
        a, b = (by_box[r] for r in item.regions)
        assert relation(a, b) == RELATIONS[item.answer] == item.meta["relation"]
    if item.task == "refexp" or kind in ("intrinsic", "relational"):
        target = by_box[item.target if item.task == "refexp" else item.regions[0]]
        expression = {"refexp": item.prompt, "caption": item.answer}.get(item.task)
        expression = expression or item.prompt.removeprefix("where is ").removesuffix(" ?")
        assert _referents(expression, scene.objects) == [target]
        if item.task == "vqa":
            assert item.answer == position(target, scene.size)
    if kind == "relations":
        assert item.answer == relations_text(scene.objects, scene.size)


def _referents(expression, objects):
    # Brute force: every object the expression is true of, read word by word (no use of the generators).
    tokens = words(expression)[1:]  # drop "the"
    for rel in RELATIONS:
        rel_words = words(rel)
        for k in range(len(tokens)):
            if tokens[k : k + len(rel_words)] == rel_words:
                head, anchor = tokens[:k], tokens[k + len(rel_words) + 1 :]
                anchors = [o for o in objects if _fits(o, anchor)]
                assert len(anchors) == 1, expression
                (anc,) = anchors
                return [o for o in objects if o is not anc and _fits(o, head) and relation(o, anc) == rel]
    return [o for o in objects if _fits(o, tokens)]


def _fits(obj, attrs):
    return set(attrs) <= {obj.size_word, obj.color, obj.shape} and attrs[-1] == obj.shape


def test_gold_answers_are_true():
    for task in ("vqa", "spatial", "spatial_lr", "spatial_pair", "refexp", "where", "refer", "relations"):
        for split in ("train", "test"):
            for _, item in iter_split(task, 100, seed=2, split=split):
                _answers_hold(item)


def _balanced(values, options, slack=4.0):
    counts = Counter(values)
    expected = len(values) / len(options)
    assert set(counts) <= set(options)
    assert all(abs(counts[o] - expected) < slack * expected**0.5 + 1 for o in options), counts


def test_test_split_is_balanced():
    items = {t: [i for _, i in iter_split(t, 600, seed=3, split="test")] for t in ("vqa", "region_vqa")}
    for kind, options in [("color", COLORS), ("shape", SHAPES), ("count", "1234"), ("text", TEXTS)]:
        _balanced([i.answer for i in items["vqa"] if i.meta["kind"] == kind], list(options))
    for kind, options in [("color", COLORS), ("shape", SHAPES), ("size", SIZES)]:
        _balanced([i.answer for i in items["region_vqa"] if i.meta["kind"] == kind], list(options))
    _balanced([i.answer for _, i in iter_split("spatial", 400, seed=3, split="test")], [0, 1, 2, 3])
    _balanced([i.answer for _, i in iter_split("swap", 400, seed=3, split="test")], [0, 1])
    _balanced([i.label for _, i in iter_split("match", 400, seed=3, split="test")], [0, 1])
    _balanced([i.answer for _, i in iter_split("spatial", 400, seed=3, split="val")], [0, 1, 2, 3])
    _balanced([i.answer for _, i in iter_split("spatial_lr", 400, seed=3, split="train")], [0, 1])
    assert {i.answer for _, i in iter_split("spatial_lr", 50, seed=3, split="test")} == {0, 1}
    kinds = [i.meta["kind"] for _, i in iter_split("refexp", 200, seed=3, split="test")]
    _balanced(kinds, ["intrinsic", "relational"])


def test_train_split_carries_the_documented_biases():
    spatial = [i.answer for _, i in iter_split("spatial", 400, seed=3, split="train")]
    assert abs(np.mean([a == RELATIONS.index("left of") for a in spatial]) - BIASES["relation"]["left of"]) < 0.08
    match = [i.label for _, i in iter_split("match", 400, seed=3, split="train")]
    assert abs(np.mean(match) - 0.5) < 0.08  # balanced: a "yes" prior made the first toy model match at chance
    pair = [i.answer for _, i in iter_split("spatial_pair", 400, seed=3, split="train")]
    assert abs(np.mean([a == RELATIONS.index("left of") for a in pair]) - BIASES["relation"]["left of"]) < 0.08
    circles = [
        i.answer for _, i in iter_split("vqa", 1500, seed=3, split="train")
        if i.meta["kind"] == "color" and "circle" in i.prompt
    ]  # fmt: skip
    assert np.mean([c == "red" for c in circles]) > 0.65
    assert all(i.meta["biases"] == [] for _, i in iter_split("spatial", 20, seed=3, split="test"))


def test_vocabulary_covers_every_text():
    vocab = set(vocabulary())
    assert all(w == w.lower() for w in vocab)
    for task in TASK_NAMES:
        for split in ("train", "test"):
            for _, item in iter_split(task, 100, seed=4, split=split):
                texts = [item.prompt, *item.candidates] + ([item.answer] if isinstance(item.answer, str) else [])
                for text in texts:
                    assert set(words(text)) <= vocab, text
    rng = np.random.default_rng(0)
    for seed in range(200):
        for q, a in instruction_pairs(make_scene(seed, with_text=seed % 3 == 0)[1], rng):
            assert set(words(q)) | set(words(a)) <= vocab, (q, a)


def test_words():
    expected = ["does", "this", "image", "match", ":", "the", "red", "circle", "?"]
    assert words("Does this image match: the red circle?") == expected
    assert words("7 cat , 42.") == ["7", "cat", ",", "4", "2", "."]


def test_caption_grammar():
    scene = Scene(
        size=90,
        background=(180, 180, 180),
        objects=[_obj("blue", "square", (60, 40, 80, 60), "large"), _obj("red", "circle", (5, 5, 15, 15))],
        texts=[TextItem("cat", "green", 14, (10, 70, 30, 80))],
    )
    assert caption(scene) == (
        "a small red circle at the top left , a large blue square on the right and the word cat at the bottom left ."
    )
    assert caption(Scene(64, (180, 180, 180), [_obj("red", "circle", (28, 28, 36, 36))])) == (
        "a small red circle in the middle ."
    )


def test_relation_is_exclusive():
    a, b = _obj("red", "circle", (0, 10, 10, 20)), _obj("blue", "square", (20, 15, 30, 25))
    assert relation(a, b) == "left of" and relation(b, a) == "right of"
    c = _obj("green", "triangle", (5, 30, 15, 40))
    assert relation(a, c) == "above" and relation(c, a) == "below"
    assert relation(c, b) is None  # diagonal: no single true relation


def test_bad_input_raises():
    with pytest.raises(ValueError, match="nope"):
        build_task("nope", 0)
    with pytest.raises(ValueError, match="dev"):
        build_task("vqa", 0, "dev")
    with pytest.raises(ValueError, match="=0"):
        next(iter_split("vqa", 0))


def test_relational_name_picks_out_one_object_or_none():
    square = _obj("blue", "square", (40, 10, 50, 20))
    left, right = _obj("red", "circle", (10, 10, 20, 20)), _obj("red", "circle", (60, 10, 70, 20))
    objects = [square, left, right]
    assert relational_name(left, objects) == "the circle left of the square"
    assert relational_name(right, objects) == "the circle right of the square"
    below = _obj("green", "circle", (40, 40, 50, 50))
    twin = _obj("green", "circle", (40, 60, 50, 70))  # also below the square
    # "the circle below the square" fits both green circles, so it is never produced; whatever is, names `twin` alone
    got = relational_name(twin, [square, below, twin])
    assert got != "the circle below the square" and (got is None or _referents(got, [square, below, twin]) == [twin])
    assert relational_name(square, [square]) is None


def test_relations_text_lists_each_related_pair_once_in_reading_order():
    a, b = _obj("red", "circle", (10, 10, 20, 20)), _obj("blue", "square", (40, 12, 50, 22))
    c = _obj("green", "triangle", (70, 70, 80, 80))  # diagonal to both: no clean relation
    scene = Scene(size=90, background=(170, 170, 170), objects=[b, c, a])
    assert relations_text(scene.objects, scene.size) == "the red circle is left of the blue square ."
    assert relations_text([a, c], 90) is None
    assert position(a, 90) == POSITIONS[0][0]
