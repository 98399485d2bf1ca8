"""The CAL experiment's label noise (N1 whole-answer swap, N2 one attribute, N3 prior-aligned hallucination) on
constructed examples, whose right outcome is known word by word, and on a real pool (rates, nesting, eligibility)."""

import pytest

from vcontrast.bench.items import Item
from vcontrast.toy.cal_inputs import clean_pool
from vcontrast.toy.grammar import words
from vcontrast.toy.noise import PRIOR_COLOR, apply_noise, attribute_slots, eligible, pool_example, toy_task
from vcontrast.toy.scenes import COLORS, SHAPES, Obj, Scene
from vcontrast.toy.tasks import TASK_NAMES

SCENE = Scene(
    size=64,
    background=(170, 170, 170),
    objects=[
        Obj("red", "circle", "small", (4, 4, 12, 12)),
        Obj("green", "circle", "small", (20, 4, 28, 12)),
        Obj("blue", "square", "large", (4, 30, 20, 46)),
        Obj("yellow", "square", "small", (30, 30, 38, 38)),
        Obj("green", "triangle", "small", (44, 44, 52, 52)),
    ],
)
CAPTION = (
    "a small red circle at the top left , a small green circle at the top , a large blue square on the left , "
    "a small yellow square in the middle and a small green triangle at the bottom right ."
)


def _example(task, answer, kind=None, regions=(), prompt="?", seed=0):
    item = Item(
        id=f"toy-{task}-train-{seed}",
        task=TASK_NAMES[task],
        image="x.png",
        prompt=prompt,
        answer=answer,
        regions=[tuple(r) for r in regions],
        meta={"kind": kind, "scene": SCENE.to_dict()} if kind else {"scene": SCENE.to_dict()},
    )
    return {"image": None, "prompt": prompt, "answer": answer, "item": item, "task": task}


def _box(i, pad=0):
    x0, y0, x1, y1 = SCENE.objects[i].box
    return (x0 - pad, y0 - pad, x1 + pad, y1 + pad)


def _corrupt_all(example, noise, seeds=range(40)):
    # The corrupted answers of one example over many noise seeds (rate 1: the example is always corrupted).
    out = []
    for seed in seeds:
        noisy, corrupted, _ = apply_noise([example], noise, 1.0, seed)
        assert corrupted == [0]
        out.append(noisy[0]["answer"])
    return out


def test_toy_task_reads_item_ids():
    assert toy_task(_example("region_caption", "a small red circle").get("item")) == "region_caption"
    with pytest.raises(ValueError, match="toy task id"):
        toy_task(Item(id="coco-1", task="vqa", image="x", prompt="?"))


def test_n2_changes_exactly_one_colour_or_shape_word_of_one_object():
    seen = set()
    for noisy in _corrupt_all(_example("caption", CAPTION), "N2"):
        old, new = words(CAPTION), words(noisy)
        assert len(old) == len(new)
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        assert len(changed) == 1
        i = changed[0]
        kind = "color" if old[i] in COLORS else "shape"
        assert (new[i] in COLORS) if kind == "color" else (new[i] in SHAPES)
        # the word belongs to an object: a colour right before a shape, or a shape right after a colour
        assert old[i + 1] in SHAPES if kind == "color" else old[i - 1] in COLORS
        seen.add(kind)
    assert seen == {"color", "shape"}


def test_n2_fixes_the_article():
    for noisy in _corrupt_all(_example("region_caption", "an orange circle"), "N2"):
        ws = words(noisy)
        assert ws[0] == ("an" if ws[1][0] in "aeiou" else "a")
        assert sum(a != b for a, b in zip(ws[1:], ["orange", "circle"], strict=True)) == 1


def test_n2_on_one_word_answers_and_ineligible_examples():
    colour = _example("vqa", "green", "color", regions=[_box(1)], prompt="what color is the circle ?")
    assert set(_corrupt_all(colour, "N2")) <= set(COLORS) - {"green"}
    shape = _example("region_vqa", "square", "shape", regions=[_box(3, pad=3)])
    assert set(_corrupt_all(shape, "N2")) <= set(SHAPES) - {"square"}
    for example in [
        _example("region_vqa", "small", "size", regions=[_box(3, pad=3)]),
        _example("vqa", "3", "count"),
        _example("caption", "the word cat at the top ."),
        _example("refer", "the red circle", "intrinsic"),
    ]:
        assert eligible([example], "N2") == [] and attribute_slots(example) == []


def test_n3_writes_the_prior_colour_only_on_non_prior_coloured_circles_and_squares():
    seen = set()
    for noisy in _corrupt_all(_example("caption", CAPTION), "N3"):
        old, new = words(CAPTION), words(noisy)
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        assert len(changed) == 1
        i = changed[0]
        assert (old[i], old[i + 1]) in {("green", "circle"), ("yellow", "square")}
        assert new[i] == PRIOR_COLOR[old[i + 1]]
        seen.add(old[i + 1])
    assert seen == {"circle", "square"}  # either eligible object may be the one


def test_n3_on_colour_questions_and_ineligible_examples():
    circle = _example("vqa", "green", "color", regions=[_box(1)], prompt="what color is the circle ?")
    assert set(_corrupt_all(circle, "N3")) == {"red"}
    square = _example("region_vqa", "yellow", "color", regions=[_box(3, pad=3)])
    assert set(_corrupt_all(square, "N3")) == {"blue"}
    for example in [
        _example("vqa", "red", "color", regions=[_box(0)]),  # already the prior
        _example("region_vqa", "green", "color", regions=[_box(4, pad=3)]),  # a triangle: no prior
        _example("vqa", "circle", "shape", regions=[_box(1)]),  # names the shape, not the colour
        _example("caption", "a small red circle on the left and a large blue square on the right ."),
        _example("relations", "the green circle is left of the yellow square .", "relations"),  # not descriptive
    ]:
        assert eligible([example], "N3") == []


def test_n1_answer_comes_from_another_example_of_the_same_task_and_kind():
    captions = [_example("caption", f"a small {c} circle on the left .", seed=i) for i, c in enumerate(COLORS)]
    colours = [_example("vqa", c, "color", regions=[_box(1)], seed=i) for i, c in enumerate(["red", "blue", "red"])]
    shapes = [_example("vqa", "circle", "shape", regions=[_box(1)], seed=9)]  # no other answer: not eligible
    other = [_example("spatial_lr", "the red circle is left of the blue square", "relation")]
    pool = captions + colours + shapes + other
    assert eligible(pool, "N1") == list(range(len(captions) + len(colours)))
    for seed in range(10):
        noisy, corrupted, _ = apply_noise(pool, "N1", 1.0, seed)
        assert corrupted == list(range(len(captions) + len(colours)))
        for i in corrupted:
            group = captions if i < len(captions) else colours
            assert noisy[i]["answer"] in {ex["answer"] for ex in group} - {pool[i]["answer"]}
            assert noisy[i]["clean_answer"] == pool[i]["answer"]
        assert noisy[len(pool) - 2 :] == pool[len(pool) - 2 :]


def test_bad_noise_arguments():
    pool = [_example("caption", CAPTION)]
    with pytest.raises(ValueError, match="noise"):
        apply_noise(pool, "N4", 0.3, 0)
    with pytest.raises(ValueError, match="rate"):
        apply_noise(pool, "N2", 1.5, 0)


@pytest.fixture(scope="module")
def pool():
    return clean_pool(240, a=0, f=0)


@pytest.mark.parametrize("noise", ["N1", "N2", "N3"])
def test_realised_rate_is_the_requested_one_on_a_real_pool(pool, noise):
    assert all(ex["task"] == toy_task(ex["item"]) for ex in pool)
    previous = set()
    for rate in (0.0, 0.3, 0.6):
        noisy, corrupted, candidates = apply_noise(pool, noise, rate, seed="a0-f0")
        n = len(candidates)
        assert n >= 5  # each noise type finds eligible examples in a real pool
        assert len(corrupted) == round(rate * n) and abs(len(corrupted) / n - rate) <= 0.5 / n
        assert set(corrupted) <= set(candidates) and previous <= set(corrupted)  # nested rates
        previous = set(corrupted)
        for i, (before, after) in enumerate(zip(pool, noisy, strict=True)):
            assert (after["answer"] != before["answer"]) == (i in previous)
        for i in corrupted:
            old, new = words(pool[i]["answer"]), words(noisy[i]["answer"])
            if noise == "N3":
                (j,) = [k for k, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
                shape = old[j + 1] if pool[i]["task"] in ("caption", "region_caption") else None
                assert new[j] in PRIOR_COLOR.values() and (shape is None or new[j] == PRIOR_COLOR[shape])
            if noise == "N2":
                assert len(old) == len(new)
                diff = [k for k, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
                assert len(diff) == 1 or (len(diff) == 2 and old[diff[0]] in ("a", "an"))
    assert apply_noise(pool, noise, 0.6, seed="a0-f0") == apply_noise(pool, noise, 0.6, seed="a0-f0")
    assert apply_noise(pool, noise, 0.6, seed="a0-f0")[1] != apply_noise(pool, noise, 0.6, seed="a0-f1")[1]


def test_pool_example_adds_the_task(pool):
    example = {k: v for k, v in pool[0].items() if k != "task"}
    assert pool_example(example)["task"] == pool[0]["task"]
