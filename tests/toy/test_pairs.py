from collections import Counter

import numpy as np
import pytest

from vcontrast.toy.grammar import PROMPTS, caption
from vcontrast.toy.pairs import instruction_pairs, swap_captions
from vcontrast.toy.scenes import make_scene
from vcontrast.toy.tasks import BIASES


def test_instruction_pairs_are_deterministic_and_true():
    for seed in range(50):
        _, scene = make_scene(seed, with_text=seed % 2 == 0, bias=BIASES["shape_color"])
        pairs = instruction_pairs(scene, np.random.default_rng(seed))
        assert pairs == instruction_pairs(scene, np.random.default_rng(seed))
        answers = dict(pairs)
        assert answers[PROMPTS["caption"]] == caption(scene)
        assert answers[PROMPTS["count"]] == str(len(scene.objects))
        assert next(a for q, a in pairs if q.startswith("does this image match")) in ("yes", "no")
        if scene.texts:
            assert answers[PROMPTS["text"]] == scene.texts[0].text


def _relations(biased):
    rng = np.random.default_rng(0)
    rels = []
    for seed in range(400):
        for q, a in instruction_pairs(make_scene(seed, n_objects=2)[1], rng, biased=biased):
            if " relative to " in q:
                rels.append(next(r for r in ("left of", "right of", "above", "below") if f" {r} " in a))
    return Counter(rels)


def test_relation_bias_only_when_biased():
    biased, plain = _relations(True), _relations(False)
    assert biased["left of"] > 2 * biased["right of"]
    assert abs(plain["left of"] - plain["right of"]) < 0.25 * (plain["left of"] + plain["right of"])


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_swap_rate_is_exact(rate):
    pairs = [(i, f"caption {i}") for i in range(101)]
    noisy, swapped = swap_captions(pairs, rate, seed=0)
    changed = [i for i, (p, n) in enumerate(zip(pairs, noisy, strict=True)) if p[1] != n[1]]
    assert changed == swapped and len(changed) == round(rate * 101)
    assert [n[0] for n in noisy] == list(range(101))
    assert sorted(n[1] for n in noisy) == sorted(p[1] for p in pairs)  # a permutation of the captions
    assert swap_captions(pairs, rate, seed=0) == (noisy, swapped)


def test_swap_edge_cases():
    assert len(swap_captions([("a", "x"), ("b", "y"), ("c", "z")], 0.3, seed=1)[1]) == 2  # k = 1 becomes 2
    assert swap_captions([("a", "x")], 1.0, seed=1) == ([("a", "x")], [])
    with pytest.raises(ValueError, match="1.5"):
        swap_captions([("a", "x")], 1.5, seed=0)
