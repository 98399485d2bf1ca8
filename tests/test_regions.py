import numpy as np
import pytest
import torch
from PIL import Image

from vcontrast.regions import (
    blackout,
    blackout_all,
    blackout_each,
    blackout_mask,
    combined_box,
    draw_boxes,
    open_image,
    parse_boxes,
    region_mask,
    to_rgb,
)


def _random_image(width: int = 12, height: int = 9, seed: int = 0) -> Image.Image:
    # Values in [1, 255]: no pixel is black before blackout, so "black" means "painted".
    pixels = np.random.default_rng(seed).integers(1, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _black(image: Image.Image) -> np.ndarray:
    return (np.asarray(image) == 0).all(axis=2)


def _expected(size: tuple[int, int], xs: range, ys: range) -> np.ndarray:
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    mask[ys.start : ys.stop, xs.start : xs.stop] = True
    return mask


def test_float_box_rounds_outward():
    # (1.2, 1.7, 3.1, 3.0) touches columns 1, 2, 3 and rows 1, 2.
    assert parse_boxes((1.2, 1.7, 3.1, 3.0), (8, 6)).tolist() == [[1, 1, 4, 3]]
    mask = region_mask((8, 6), (1.2, 1.7, 3.1, 3.0))
    np.testing.assert_array_equal(mask, _expected((8, 6), range(1, 4), range(1, 3)))


def test_integer_box_is_half_open():
    mask = region_mask((5, 5), (1, 1, 3, 2))
    assert mask.sum() == 2
    assert mask[1, 1] and mask[1, 2] and not mask[1, 3] and not mask[2, 1]


def test_tiny_float_box_covers_the_pixel_it_touches():
    np.testing.assert_array_equal(parse_boxes((2.3, 2.3, 2.4, 2.4), (5, 5)), [[2, 2, 3, 3]])


def test_partly_outside_boxes_are_clipped():
    boxes = [(-3, -2, 2, 2), (6, 4, 20, 30), (-1.5, 3.5, 100.0, 3.9)]
    assert parse_boxes(boxes, (8, 6)).tolist() == [[0, 0, 2, 2], [6, 4, 8, 6], [0, 3, 8, 4]]


@pytest.mark.parametrize(
    "box, reason",
    [
        ((1, 2, 3), "4 numbers"),
        ((1, 2, 3, 4, 5), "4 numbers"),
        ((1.0, float("nan"), 3.0, 4.0), "NaN"),
        ((1.0, 2.0, float("inf"), 4.0), "infinite"),
        ((5, 1, 2, 4), "inverted"),
        ((1, 5, 4, 2), "inverted"),
        ((2, 1, 2, 4), "zero area"),
        ((1, 3, 4, 3), "zero area"),
        ((20, 1, 30, 4), "outside"),
        ((-10, -10, 0, 0), "outside"),
        ((1, 6, 4, 9), "outside"),
        (("a", 1, 2, 3), "4 numbers"),
    ],
)
def test_bad_box_raises_naming_the_box(box, reason):
    with pytest.raises(ValueError, match=reason) as info:
        parse_boxes([(0, 0, 1, 1), box], (8, 6))
    assert repr(box) in str(info.value)


def test_bad_box_in_blackout_raises():
    with pytest.raises(ValueError, match=r"\(5, 1, 2, 4\)"):
        blackout(_random_image(), (5, 1, 2, 4))


@pytest.mark.parametrize("boxes", [[], (), np.zeros((0, 4))])
def test_blackout_without_regions_raises(boxes):
    with pytest.raises(ValueError, match="no regions"):
        blackout(_random_image(), boxes)
    with pytest.raises(ValueError, match="no regions"):
        blackout_each(_random_image(), boxes)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="size"):
        parse_boxes((0, 0, 1, 1), (0, 5))
    with pytest.raises(ValueError, match="boxes"):
        parse_boxes("0,0,1,1", (5, 5))
    with pytest.raises(ValueError, match="fill"):
        blackout(_random_image(), (0, 0, 1, 1), fill=(0, 0, 256))
    with pytest.raises(ValueError, match="width"):
        draw_boxes(_random_image(), (0, 0, 1, 1), width=0)
    with pytest.raises(TypeError, match="PIL"):
        to_rgb(np.zeros((2, 2, 3), dtype=np.uint8))


def test_box_formats_agree():
    size = (10, 8)
    expected = parse_boxes([(1, 2, 5, 6), (0.5, 0.5, 9.5, 1.5)], size)
    for boxes in (
        [[1, 2, 5, 6], [0.5, 0.5, 9.5, 1.5]],
        np.array([(1, 2, 5, 6), (0.5, 0.5, 9.5, 1.5)]),
        torch.tensor([(1, 2, 5, 6), (0.5, 0.5, 9.5, 1.5)]),
        [torch.tensor([1, 2, 5, 6]), np.array([0.5, 0.5, 9.5, 1.5])],
    ):
        np.testing.assert_array_equal(parse_boxes(boxes, size), expected)
    # A single box, flat, is one box.
    for box in ((1, 2, 5, 6), [1, 2, 5, 6], np.array([1, 2, 5, 6]), torch.tensor([1.0, 2.0, 5.0, 6.0])):
        assert parse_boxes(box, size).tolist() == [[1, 2, 5, 6]]


def test_normalized_boxes():
    size = (10, 8)
    assert parse_boxes((0.1, 0.25, 0.7, 0.5), size, normalized=True).tolist() == [[1, 2, 7, 4]]
    assert parse_boxes((0.0, 0.0, 1.0, 1.0), size, normalized=True).tolist() == [[0, 0, 10, 8]]
    # Without the flag the same numbers are pixels: a tiny box at the origin.
    assert parse_boxes((0.0, 0.0, 1.0, 1.0), size).tolist() == [[0, 0, 1, 1]]
    np.testing.assert_array_equal(
        region_mask(size, (0.1, 0.25, 0.7, 0.5), normalized=True), region_mask(size, (1, 2, 7, 4))
    )
    with pytest.raises(ValueError, match="outside"):
        parse_boxes((2, 2, 4, 4), size, normalized=True)


def test_union_is_or_of_single_masks():
    size = (12, 9)
    boxes = [(0, 0, 3, 3), (2, 2, 6.5, 5), (8.2, 1, 12, 9)]
    union = region_mask(size, boxes)
    singles = np.logical_or.reduce([region_mask(size, box) for box in boxes])
    np.testing.assert_array_equal(union, singles)
    np.testing.assert_array_equal(_black(blackout(_random_image(), boxes)), union)


def test_blackout_keeps_other_pixels_and_size():
    image = _random_image()
    contrast = blackout(image, (2, 3, 5, 7))
    assert contrast.size == image.size and contrast.mode == "RGB"
    mask = region_mask(image.size, (2, 3, 5, 7))
    np.testing.assert_array_equal(np.asarray(contrast)[~mask], np.asarray(image)[~mask])
    assert (np.asarray(contrast)[mask] == 0).all()


def test_blackout_fill():
    contrast = blackout(_random_image(), (0, 0, 2, 2), fill=(10, 20, 30))
    assert contrast.getpixel((1, 1)) == (10, 20, 30)


def test_blackout_each_gives_one_image_per_box():
    image = _random_image()
    boxes = [(0, 0, 3, 3), (4.5, 2, 8, 6), (9, 0, 12, 9)]
    images = blackout_each(image, boxes)
    assert len(images) == len(boxes)
    for contrast, box in zip(images, boxes, strict=True):
        assert contrast.size == image.size
        np.testing.assert_array_equal(_black(contrast), region_mask(image.size, box))


def test_input_is_never_modified():
    image = _random_image()
    before = image.tobytes()
    blackout(image, [(0, 0, 4, 4)])
    blackout_each(image, [(0, 0, 4, 4), (5, 5, 9, 9)])
    blackout_mask(image, region_mask(image.size, (1, 1, 3, 3)))
    draw_boxes(image, [(0, 0, 4, 4)])
    to_rgb(image).paste((0, 0, 0), (0, 0, 4, 4))
    assert image.tobytes() == before


def _in_mode(mode: str) -> Image.Image:
    rng = np.random.default_rng(1)
    if mode == "I;16":
        values = rng.integers(257, 65536, size=(9, 12), dtype=np.uint16)
        return Image.fromarray(values)  # 2-D uint16 -> mode I;16
    image = _random_image().convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray(rng.integers(0, 256, size=(9, 12), dtype=np.uint8), mode="L")
        image.putalpha(alpha)
    return image


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_modes_give_rgb_with_black_region(mode):
    image = _in_mode(mode)
    assert image.mode == mode
    before = image.tobytes()
    contrast = blackout(image, (3, 2, 7.5, 6))
    assert contrast.mode == "RGB" and contrast.size == image.size
    mask = region_mask(image.size, (3, 2, 7.5, 6))
    pixels = np.asarray(contrast)
    assert (pixels[mask] == 0).all()
    np.testing.assert_array_equal(pixels[~mask], np.asarray(to_rgb(image))[~mask])
    assert image.tobytes() == before


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb == rgb[:, :, :1]).all()  # gray


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (2, 1))
    image.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent blue
    image.putpixel((1, 0), (200, 0, 0, 255))  # opaque red
    assert list(to_rgb(image).getdata()) == [(255, 255, 255), (200, 0, 0)]


def test_open_image_converts_like_to_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(path)
    assert open_image(path).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, as the processor would
    with pytest.raises(ValueError, match="nope.png' not found"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        open_image(tmp_path / "bad.png")


def test_blackout_all():
    image = _in_mode("LA")
    result = blackout_all(image)
    assert result.mode == "RGB" and result.size == image.size
    assert not np.asarray(result).any()


def test_blackout_mask():
    image = _random_image()
    mask = np.zeros((9, 12), dtype=bool)
    mask[2:5, 1:3] = True
    mask[7, 10] = True
    np.testing.assert_array_equal(_black(blackout_mask(image, mask)), mask)
    np.testing.assert_array_equal(_black(blackout_mask(image, torch.from_numpy(mask.astype(np.uint8)))), mask)


@pytest.mark.parametrize("shape", [(12, 9), (9, 11), (9, 12, 1)])
def test_blackout_mask_wrong_shape_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        blackout_mask(_random_image(), np.ones(shape, dtype=bool))


def test_blackout_mask_rejects_empty_and_non_boolean():
    with pytest.raises(ValueError, match="empty"):
        blackout_mask(_random_image(), np.zeros((9, 12), dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        blackout_mask(_random_image(), np.full((9, 12), 0.5))


def test_combined_box():
    assert combined_box([(0, 2, 4, 4), (3, 1, 6, 3), (1.5, 1.5, 2, 8)]) == (0.0, 1.0, 6.0, 8.0)
    assert combined_box((1, 2, 3, 4)) == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="empty"):
        combined_box([])
    with pytest.raises(ValueError, match=r"\(3, 1, 2, 4\)"):
        combined_box([(0, 0, 1, 1), (3, 1, 2, 4)])


def test_draw_boxes_outlines_only():
    image = Image.new("RGB", (10, 10), (0, 0, 0))
    picture = draw_boxes(image, [(2, 2, 8, 8)], color=(0, 255, 0), width=1)
    drawn = (np.asarray(picture) == (0, 255, 0)).all(axis=2)
    outline = region_mask((10, 10), (2, 2, 8, 8)) & ~region_mask((10, 10), (3, 3, 7, 7))
    np.testing.assert_array_equal(drawn, outline)
    assert drawn.sum() == 20


def test_masks_are_painted_exactly():
    from vcontrast.regions import mask_box, region_masks

    image = Image.new("RGB", (6, 4), "white")
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 1] = mask[2, 4] = True  # two separate pixels: a box would cover the pixels between them
    out = np.array(blackout(image, mask))
    assert (out[mask] == 0).all() and (out[~mask] == 255).all()
    pil_mask = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    assert np.array_equal(np.array(blackout(image, pil_mask)), out)
    assert np.array_equal(np.array(blackout(image, torch.from_numpy(mask))), out)
    # mixed with a box: the union
    mixed = np.array(blackout(image, [mask, (0, 3, 2, 4)]))
    assert (mixed[3, :2] == 0).all() and (mixed[mask] == 0).all() and (mixed[0] == 255).all()
    each = blackout_each(image, [mask, (0, 3, 2, 4)])
    assert np.array_equal(np.array(each[0]), out) and (np.array(each[1])[mask] == 255).all()
    assert mask_box(mask) == (1.0, 1.0, 5.0, 3.0)
    assert [m.sum() for m in region_masks((6, 4), np.stack([mask, mask]))] == [2, 2]


def test_bad_masks():
    image = Image.new("RGB", (6, 4), "white")
    with pytest.raises(ValueError, match="expected"):
        blackout(image, np.ones((3, 6), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        blackout(image, np.zeros((4, 6), dtype=bool))
    with pytest.raises(ValueError, match="binarise"):
        blackout(image, Image.new("L", (6, 4), 128))
    with pytest.raises(ValueError, match="mode"):
        blackout(image, Image.new("RGB", (6, 4)))


def test_normalized_looking_boxes_warn_once(caplog):
    import logging

    from vcontrast import regions

    regions._warn_normalized_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="vcontrast.regions"):
        for _ in range(3):
            regions.parse_boxes((0.1, 0.2, 0.5, 0.5), (10, 8))
    assert [r.getMessage() for r in caplog.records] == [
        "All boxes lie inside [0, 1] pixels; pass `normalized=True` if they are fractions of the size."
    ]


def test_non_boolean_mask_regions_are_refused_with_a_hint():
    """Only boolean arrays are mask regions: a 0/1 integer or float array is never read as a mask (a (K, 4) box
    array of 0s and 1s would be ambiguous), and one of another shape than (K, 4) says how to make it a mask."""
    from vcontrast.regions import region_masks, split_regions

    image = Image.new("RGB", (6, 4), "white")
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    for numeric in (mask.astype(np.uint8), mask.astype(np.float32), torch.from_numpy(mask.astype(np.uint8))):
        for regions in (numeric, [numeric], [numeric, (0, 0, 2, 2)]):
            with pytest.raises(ValueError, match=r"boolean \(H, W\).*astype\(bool\)"):
                blackout(image, regions)
        with pytest.raises(ValueError, match="boolean"):
            split_regions(numeric[None])  # (1, H, W) numeric
    painted = np.array(blackout(image, mask))
    assert painted[2, 3].tolist() == [0, 0, 0] and painted[0, 0].tolist() == [255, 255, 255]
    assert np.array_equal(np.array(blackout(image, torch.from_numpy(mask))), np.array(blackout(image, mask)))
    # an (N, 4) array of 0s and 1s is boxes, even on an image whose (height, width) is (N, 4)
    boxes = np.array([[0, 0, 1, 1], [1, 1, 2, 2]], dtype=np.uint8)
    assert [m.sum() for m in region_masks((4, 2), boxes)] == [1, 1]
    # blackout_mask takes one mask and nothing else, so 0/1 numbers are unambiguous there
    assert np.array_equal(np.array(blackout_mask(image, mask.astype(np.uint8))), np.array(blackout(image, mask)))


def test_pixel_box_check_for_normalised_looking_boxes():
    from vcontrast.regions import _check_pixel_boxes

    with pytest.raises(ValueError, match=r"inside \[0, 1\].*normalized=True"):
        _check_pixel_boxes([(0.1, 0.2, 0.5, 0.5)], (8, 8))
    with pytest.raises(ValueError, match="--normalized-boxes"):
        _check_pixel_boxes([(0, 0, 1, 1), (0.5, 0, 1, 0.5)], (100, 80), option="--normalized-boxes")
    _check_pixel_boxes([(0.1, 0.2, 0.5, 0.5)], (7, 8))  # a tiny image: a one-pixel box is plausible
    _check_pixel_boxes([(0, 0, 1, 1), (0, 0, 2, 2)], (100, 80))  # one box beyond 1: pixels
    _check_pixel_boxes([], (100, 80))
