import time
from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest

from vcontrast.toy.scenes import COLORS, GAP, SHAPES, SIZES, TEXTS, Scene, make_scene, render
from vcontrast.toy.tasks import BIASES

SEEDS = range(200)


def _all_boxes(scene):
    return [t.box for t in [*scene.objects, *scene.texts]]


def test_same_seed_same_bytes_and_different_seeds_differ():
    for seed in (0, 1, 12345):
        (a, sa), (b, sb) = make_scene(seed, with_text=True), make_scene(seed, with_text=True)
        assert a.tobytes() == b.tobytes()
        assert sa == sb
    images = {make_scene(seed)[0].tobytes() for seed in range(50)}
    assert len(images) == 50


def test_counts_sizes_and_parameters():
    for seed in SEEDS:
        image, scene = make_scene(seed)
        assert 1 <= len(scene.objects) <= 4
        assert 64 <= scene.size <= 96 and image.size == (scene.size, scene.size) and image.mode == "RGB"
        assert scene.texts == []
    assert {len(make_scene(s)[1].objects) for s in SEEDS} == {1, 2, 3, 4}
    _, scene = make_scene(7, n_objects=3, size=80, with_text=True)
    assert len(scene.objects) == 3 and scene.size == 80 and len(scene.texts) == 1 and scene.texts[0].text in TEXTS


def test_each_box_is_tight_and_the_rest_is_background():
    for seed in SEEDS:
        image, scene = make_scene(seed, with_text=seed % 2 == 0)
        black = replace(scene, background=(0, 0, 0), objects=[], texts=[])
        for obj in scene.objects:  # shapes fill their box edge to edge
            assert render(replace(black, objects=[obj])).getbbox() == obj.box
        for text in scene.texts:  # antialiased glyphs: inside the box
            x0, y0, x1, y1 = render(replace(black, texts=[text])).getbbox()
            bx0, by0, bx1, by1 = text.box
            assert bx0 <= x0 < x1 <= bx1 and by0 <= y0 < y1 <= by1
        pixels = np.asarray(image).copy()
        for x0, y0, x1, y1 in _all_boxes(scene):
            pixels[y0:y1, x0:x1] = scene.background
        assert (pixels == np.array(scene.background, dtype=np.uint8)).all()


def test_boxes_keep_apart_and_inside():
    for seed in SEEDS:
        _, scene = make_scene(seed, n_objects=4, with_text=True)
        boxes = _all_boxes(scene)
        for x0, y0, x1, y1 in boxes:
            assert GAP <= x0 < x1 <= scene.size - GAP and GAP <= y0 < y1 <= scene.size - GAP
        for a, b in combinations(boxes, 2):
            assert a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def test_render_and_dict_round_trip():
    image, scene = make_scene(3, with_text=True)
    assert render(scene).tobytes() == image.tobytes()
    assert Scene.from_dict(scene.to_dict()) == scene


def test_palette():
    assert len(COLORS) >= 6 and len(SHAPES) >= 3 and len(SIZES) >= 2
    rgb = np.array(list(COLORS.values()), dtype=float)
    assert (rgb.sum(1) > 150).all()  # far from the black CRG fill
    assert min(np.linalg.norm(a - b) for a, b in combinations(rgb, 2)) > 60
    assert all(np.ptp(c) > 100 for c in rgb)  # saturated, so never a grey background


def test_shape_color_bias():
    bias = BIASES["shape_color"]
    circles = [o for s in range(600) for o in make_scene(s, bias=bias)[1].objects if o.shape == "circle"]
    assert abs(np.mean([o.color == "red" for o in circles]) - bias["circle"][1]) < 0.08
    circles = [o for s in range(600) for o in make_scene(s)[1].objects if o.shape == "circle"]
    assert abs(np.mean([o.color == "red" for o in circles]) - 1 / len(COLORS)) < 0.08


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_objects": 0}, "=0"),
        ({"n_objects": 5}, "=5"),
        ({"size": 20}, "=20"),
        ({"bias": {"star": ("red", 1)}}, "star"),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scene(0, **kwargs)


def test_fast():
    start = time.perf_counter()
    for seed in range(100):
        make_scene(seed, with_text=True)
    assert (time.perf_counter() - start) / 100 < 0.005
