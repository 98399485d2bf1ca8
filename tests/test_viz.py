"""Pictures: sizes, colours where the values say, and bad input."""

import numpy as np
import pytest
from PIL import Image

from vcontrast.regions import blackout
from vcontrast.viz import side_by_side, token_heatmap, token_heatmap_ansi, token_heatmap_html


def test_side_by_side_shows_both_panels_and_outlines_the_box():
    image = Image.new("RGB", (32, 24), (0, 200, 0))
    contrast = blackout(image, [(8, 8, 16, 16)])
    pic = side_by_side(image, contrast, [(8, 8, 16, 16)], {"plain": "red", "CRG": "green"}, title="what ?")
    scale = 8  # ceil(256 / 32)
    assert pic.width == 2 * 32 * scale + 8 + 16
    arr = np.asarray(pic)
    # the outline colour appears on the left panel only; the right panel has the black square, up-scaled
    left = arr[:, 8 : 8 + 32 * scale]
    assert ((left[..., 0] == 255) & (left[..., 1] == 40)).any()
    right = arr[:, 8 + 32 * scale + 8 :][:, : 32 * scale]
    assert (right.reshape(-1, 3) == 0).all(axis=1).sum() >= (8 * scale) ** 2


def test_side_by_side_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="size"):
        side_by_side(Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8)), [], {})


def test_heatmap_colours_follow_values():
    pic = np.asarray(token_heatmap(["low", "high"], [1.0, 5.0], width=200))
    colours = {tuple(c) for c in pic.reshape(-1, 3)}
    assert (255, 89, 25) in colours  # saturated end for 5.0
    html = token_heatmap_html(["a", "<b>"], [1.0, 5.0], title="t")
    assert "&lt;b&gt;" in html and 'title="5.000"' in html
    ansi = token_heatmap_ansi(["a"], [-1.0])
    assert ansi.startswith("\x1b[48;2;") and "a" in ansi


def test_heatmap_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        token_heatmap(["a", "b"], [1.0])
