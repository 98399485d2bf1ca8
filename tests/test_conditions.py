import numpy as np
import pytest
from PIL import Image

from vcontrast.conditions import (
    Blackout,
    DiffusionNoise,
    GaussianBlur,
    NoImage,
    PatchMask,
    VisualCondition,
    parse_condition,
)
from vcontrast.regions import blackout


def _random_image(width: int = 40, height: int = 20, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(1, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _scene(size: int = 64) -> Image.Image:
    # Structured image (gradient, bright square, dark stripe) so correlation with the original is meaningful.
    y, x = np.mgrid[0:size, 0:size]
    gray = (x * 255 / (size - 1)).astype(np.float64)
    gray[8:30, 10:40] = 255
    gray[40:50, :] = 0
    pixels = np.stack([gray, 255 - gray, (gray + y * 2) % 256], axis=2).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _black(image: Image.Image) -> np.ndarray:
    return (np.asarray(image) == 0).all(axis=2)


def _cells(size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    # Independent statement of the grid geometry: pixel -> cell id, columns along x.
    width, height = size
    columns, rows = grid
    column = np.floor(np.arange(width) * columns / width).astype(int)
    row = np.floor(np.arange(height) * rows / height).astype(int)
    return row[:, None] * columns + column[None, :]


def _corr(a: Image.Image, b: Image.Image) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel())[0, 1])


@pytest.mark.parametrize(
    "condition",
    [Blackout([(1, 1, 5, 5)]), PatchMask(0.5), GaussianBlur(1.0), DiffusionNoise(500)],
    ids=lambda c: c.name,
)
def test_apply_gives_rgb_of_same_size_and_keeps_input(condition):
    image = _random_image(23, 17).convert("L")
    before = image.tobytes()
    result = condition.apply(image, key=3)
    assert result.mode == "RGB" and result.size == image.size
    assert image.tobytes() == before
    assert isinstance(condition, VisualCondition) and not condition.drops_image
    # `is_random`: whether the key changes the image (what ContrastCollator needs a stable key for).
    assert condition.is_random == (condition.apply(image, key=4).tobytes() != result.tobytes())


def test_no_image():
    condition = NoImage()
    assert condition.drops_image and condition.name == "none"
    with pytest.raises(RuntimeError, match="adapter"):
        condition.apply(_random_image())


def test_blackout_matches_regions_and_ignores_key():
    image = _random_image()
    condition = Blackout([(1, 2, 7.5, 9), (20, 0, 40, 5)], fill=(0, 0, 0))
    expected = np.asarray(blackout(image, [(1, 2, 7.5, 9), (20, 0, 40, 5)]))
    np.testing.assert_array_equal(np.asarray(condition.apply(image)), expected)
    np.testing.assert_array_equal(np.asarray(condition.apply(image, key=7)), expected)
    assert condition.boxes == ((1.0, 2.0, 7.5, 9.0), (20.0, 0.0, 40.0, 5.0))
    assert hash(condition) == hash(Blackout(((1, 2, 7.5, 9), (20, 0, 40, 5))))
    assert Blackout((0, 0, 1, 1)).boxes == ((0.0, 0.0, 1.0, 1.0),)


def test_blackout_normalized():
    image = _random_image()
    got = Blackout((0.0, 0.0, 0.5, 0.5), normalized=True).apply(image)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(blackout(image, (0, 0, 20, 10))))


def test_blackout_validates():
    with pytest.raises(ValueError, match="at least one region"):
        Blackout([])
    with pytest.raises(ValueError, match=r"\(4, 1, 2, 3\)"):
        Blackout([(0, 0, 1, 1), (4, 1, 2, 3)])
    with pytest.raises(ValueError, match="fill"):
        Blackout((0, 0, 1, 1), fill=(0, 0))
    with pytest.raises(ValueError, match="normalized"):
        Blackout((0, 0, 1, 1), normalized="yes")


@pytest.mark.parametrize(
    "size, grid, ratio, expected",
    [
        ((40, 20), (20, 10), 0.5, 100),
        ((40, 20), (20, 10), 0.7, 140),
        ((40, 20), (20, 10), 0.9, 180),
        ((45, 23), (20, 10), 0.33, 66),
        ((30, 7), (5, 1), 0.5, 3),  # 2.5 rounds half up
        ((40, 20), (20, 10), 1e-4, 1),  # at least one patch
        ((40, 20), (20, 10), 1.0, 200),
        ((8, 4), (20, 10), 0.5, 16),  # grid larger than the image: one patch per pixel
    ],
)
def test_patch_mask_blacks_out_exact_number_of_cells(size, grid, ratio, expected):
    result = PatchMask(ratio, grid=grid, seed=1).apply(_random_image(*size), key=2)
    black = _black(result)
    cells = _cells(size, (min(grid[0], size[0]), min(grid[1], size[1])))
    n = cells.max() + 1
    black_pixels = np.bincount(cells.ravel(), weights=black.ravel(), minlength=n)
    cell_pixels = np.bincount(cells.ravel(), minlength=n)
    # Each cell is all black or untouched, and exactly `expected` cells are black.
    assert np.all((black_pixels == 0) | (black_pixels == cell_pixels))
    assert int((black_pixels == cell_pixels).sum()) == expected


def test_patch_mask_grid_is_columns_by_rows():
    # A 20x10 grid on a 40x20 image: cells are 2x2 pixels, so every black run along x has an even length.
    mask = PatchMask(0.5, grid=(20, 10)).mask((40, 20))
    np.testing.assert_array_equal(mask, np.repeat(np.repeat(mask[::2, ::2], 2, axis=0), 2, axis=1))
    assert mask[::2, ::2].shape == (10, 20)


def test_patch_mask_default_grid_is_10_across_and_20_down():
    # The CAL paper: "10 pieces in width and 20 in height". On a 100 (wide) x 200 (tall) image the cells are 10x10
    # squares: the mask is constant on each 10x10 block, 20 blocks down and 10 across. The transposed grid (20 across,
    # 10 down) would make 5x20 cells, which no 10x10 block tiling holds.
    mask = PatchMask(0.5).mask((100, 200))
    assert mask.shape == (200, 100)  # (height, width)
    blocks = mask.reshape(20, 10, 10, 10)  # (row, y in cell, column, x in cell)
    cells = blocks[:, 0, :, 0]  # (20 rows, 10 columns)
    np.testing.assert_array_equal(blocks, np.broadcast_to(cells[:, None, :, None], blocks.shape))
    assert cells.shape == (20, 10) and int(cells.sum()) == 100
    assert PatchMask(0.5).grid == (10, 20) and PatchMask(0.5, grid=(20, 10)).name == "patch:0.5,grid=20x10"


def test_patch_mask_is_deterministic_per_seed_and_key():
    image = _random_image()
    condition = PatchMask(0.5)
    first = np.asarray(condition.apply(image, key=5))
    np.testing.assert_array_equal(first, np.asarray(PatchMask(0.5).apply(image, key=5)))
    assert not np.array_equal(first, np.asarray(condition.apply(image, key=6)))
    assert not np.array_equal(first, np.asarray(PatchMask(0.5, seed=1).apply(image, key=5)))
    # (seed, key) is a pair, not a sum.
    assert not np.array_equal(PatchMask(0.5, seed=1).mask((40, 20), 0), PatchMask(0.5, seed=0).mask((40, 20), 1))


def test_patch_mask_fill():
    result = np.asarray(PatchMask(1.0, fill=(1, 2, 3)).apply(_random_image()))
    assert (result == (1, 2, 3)).all()


def test_gaussian_blur_keeps_size_and_smooths():
    image = _random_image(32, 24)
    light = GaussianBlur(1).apply(image)
    heavy = GaussianBlur(10).apply(image)
    assert light.size == heavy.size == image.size
    assert not np.array_equal(np.asarray(light), np.asarray(image))
    # Blur lowers the pixel-to-pixel variation, more so with a larger sigma.
    spread = [np.abs(np.diff(np.asarray(im, dtype=float), axis=1)).mean() for im in (image, light, heavy)]
    assert spread[0] > spread[1] > spread[2]


def test_diffusion_noise_small_step_is_close_to_image():
    image = _scene()
    noisy = DiffusionNoise(10).apply(image)
    assert np.abs(np.asarray(noisy, dtype=float) - np.asarray(image, dtype=float)).mean() < 3
    assert _corr(noisy, image) > 0.99


def test_diffusion_noise_last_step_is_nearly_noise():
    image = _scene()
    noisy = DiffusionNoise(999).apply(image)
    assert 0.0 < _corr(noisy, image) < 0.4
    # Halfway the image is still visible, but less than at step 10.
    assert 0.4 < _corr(DiffusionNoise(500).apply(image), image) < _corr(DiffusionNoise(10).apply(image), image)


def test_diffusion_noise_schedule_matches_vcd():
    betas = 1 / (1 + np.exp(-np.linspace(-6, 6, 1000))) * (0.5e-2 - 1e-5) + 1e-5
    assert DiffusionNoise(500).alpha_bar == pytest.approx(np.prod(1 - betas[:501]))
    assert DiffusionNoise(999).alpha_bar == pytest.approx(0.0812, abs=1e-3)


def test_diffusion_noise_is_deterministic_per_seed_and_key():
    image = _scene(16)
    a = np.asarray(DiffusionNoise(500).apply(image, key=1))
    np.testing.assert_array_equal(a, np.asarray(DiffusionNoise(500).apply(image, key=1)))
    assert not np.array_equal(a, np.asarray(DiffusionNoise(500).apply(image, key=2)))
    assert not np.array_equal(a, np.asarray(DiffusionNoise(500, seed=1).apply(image, key=1)))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PatchMask(0), "ratio"),
        (lambda: PatchMask(1.5), "ratio"),
        (lambda: PatchMask(float("nan")), "ratio"),
        (lambda: PatchMask(True), "ratio"),
        (lambda: PatchMask(0.5, grid=(20,)), "grid"),
        (lambda: PatchMask(0.5, grid=(0, 10)), "grid"),
        (lambda: PatchMask(0.5, grid=(2.5, 10)), "grid"),
        (lambda: PatchMask(0.5, seed=-1), "seed"),
        (lambda: PatchMask(0.5, fill=(0, 0, 300)), "fill"),
        (lambda: GaussianBlur(0), "sigma"),
        (lambda: GaussianBlur(-1.0), "sigma"),
        (lambda: GaussianBlur(float("inf")), "sigma"),
        (lambda: DiffusionNoise(1000), "step"),
        (lambda: DiffusionNoise(-1), "step"),
        (lambda: DiffusionNoise(1.5), "step"),
        (lambda: DiffusionNoise(5, total=0), "total"),
        (lambda: DiffusionNoise(5, seed=0.5), "seed"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_key_raises():
    with pytest.raises(ValueError, match="key"):
        PatchMask(0.5).apply(_random_image(), key=-1)


@pytest.mark.parametrize(
    "condition",
    [
        NoImage(),
        PatchMask(0.5),
        PatchMask(0.7, grid=(8, 4), seed=3, fill=(255, 255, 255)),
        PatchMask(0.123456789),
        GaussianBlur(1),
        GaussianBlur(2.5),
        DiffusionNoise(500),
        DiffusionNoise(7, total=10, seed=2),
    ],
    ids=lambda c: c.name,
)
def test_parse_condition_round_trips(condition):
    assert parse_condition(condition.name) == condition


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("none", NoImage()),
        ("No-Image", NoImage()),
        ("no_image", NoImage()),
        (" patch : 0.5 ", PatchMask(0.5)),
        ("patch:0.9,seed=3,grid=10x5", PatchMask(0.9, grid=(10, 5), seed=3)),
        ("blur:10", GaussianBlur(10.0)),
        ("noise:500", DiffusionNoise(500)),
        ("noise:50,total=100,seed=4", DiffusionNoise(50, total=100, seed=4)),
    ],
)
def test_parse_condition(spec, expected):
    assert parse_condition(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "garbage",
        "patch",
        "patch:",
        "patch:abc",
        "patch:0",
        "patch:1.5",
        "patch:0.5,bogus=1",
        "patch:0.5,seed=1,seed=2",
        "patch:0.5,grid=20",
        "patch:0.5,fill=0/0",
        "blur:0",
        "blur:-1",
        "blur:nan",
        "blur:1,seed=2",
        "noise:1000",
        "noise:1.5",
        "noise:-1",
        "none:1",
        "blackout",
        "foo:1",
        5,
        None,
    ],
)
def test_parse_condition_rejects_garbage(spec):
    with pytest.raises(ValueError):
        parse_condition(spec)
