"""Visual conditions: small value objects that turn a reference image into a contrast image.

CRG contrasts the image with a copy whose key regions are black ([`Blackout`]); CAL contrasts it with no image at all
([`NoImage`]) and, in its appendix, with random patch masking ([`PatchMask`]) and Gaussian blur ([`GaussianBlur`]);
VCD contrasts it with forward-diffusion noise ([`DiffusionNoise`]). Each condition is a frozen dataclass, checked
when it is built, whose `apply(image, key)` returns a new RGB image of the same size (so every processor yields the
same image-token layout for both conditions). Random conditions draw from a generator seeded with `(seed, key)`: the
same condition gives the same image for the same key, and a dataset passes the sample index as `key` to give each
sample its own mask, reproducibly.

[`NoImage`] has no pixels: the model adapter drops the image tokens instead (`drops_image` is `True`).

Like [`vcontrast.regions`], this module needs only numpy and PIL.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from vcontrast.regions import _check_box, _check_fill, _check_size, _paint, _split_boxes, blackout, to_rgb

__all__ = [
    "Blackout",
    "DiffusionNoise",
    "GaussianBlur",
    "NoImage",
    "PatchMask",
    "VisualCondition",
    "parse_condition",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_seed(name: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"`{name}` (={value!r}) has to be a non-negative integer")
    return int(value)


def _rng(seed: int, key: int) -> np.random.Generator:
    # Seeding from the pair (not seed + key) keeps (seed=0, key=1) and (seed=1, key=0) independent.
    return np.random.default_rng([seed, _check_seed("key", key)])


def _fmt(value: float) -> str:
    # Shortest text that parses back to the same float; integral values without ".0" ("blur:10").
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


class VisualCondition(ABC):
    """
    A visual condition for one stream of a contrast: a deterministic function from a reference image to the image
    that stream sees.

    Subclasses are frozen dataclasses. `name` is a short text that [`parse_condition`] reads back into an equal
    condition (except for [`Blackout`], whose boxes do not fit in a flag).
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """`str`: short identifier, such as `"patch:0.5"`; used in CLI flags, logs and result tables."""

    @property
    def drops_image(self) -> bool:
        """`bool`: whether this condition removes the image tokens altogether (only [`NoImage`])."""
        return False

    @property
    def is_random(self) -> bool:
        """`bool`: whether `apply` draws from a generator seeded with its `key` ([`PatchMask`], [`DiffusionNoise`])."""
        return False

    @abstractmethod
    def apply(self, image: Image.Image, key: int = 0) -> Image.Image:
        """
        Build the contrast image.

        Args:
            image (`PIL.Image.Image`):
                The reference image, any mode [`vcontrast.regions.to_rgb`] handles. It is not modified.
            key (`int`, *optional*, defaults to `0`):
                Non-negative integer mixed into the seed of random conditions (for example the sample index), so
                that each sample gets its own, reproducible, randomness. Deterministic conditions ignore it.

        Returns:
            `PIL.Image.Image`: a new RGB image of the same size as `image`.
        """


@dataclass(frozen=True)
class NoImage(VisualCondition):
    """
    No image at all: the image tokens are dropped from the sequence (CAL's contrast condition).

    This condition is carried out by the model adapter, which removes the image tokens and keeps every text token at
    the position it has with the image; there are no pixels to build, so `apply` raises.

    Examples:

    ```python
    >>> NoImage().drops_image
    True
    ```
    """

    @property
    def name(self) -> str:
        return "none"

    @property
    def drops_image(self) -> bool:
        return True

    def apply(self, image: Image.Image, key: int = 0) -> Image.Image:
        raise RuntimeError(
            "NoImage has no contrast image: the model adapter drops the image tokens instead of changing pixels. "
            "Check `condition.drops_image` before calling `condition.apply`."
        )


@dataclass(frozen=True)
class Blackout(VisualCondition):
    """
    CRG's contrast condition: the union of the regions painted black (see [`vcontrast.regions.blackout`]).

    Args:
        boxes (`Sequence[float]`, `Sequence[Sequence[float]]`, `np.ndarray` or `torch.Tensor`):
            One box `(x0, y0, x1, y1)` or a non-empty sequence of boxes. They are stored as a tuple of float tuples;
            clipping to the image happens in `apply`, where the size is known.
        fill (`tuple[int, int, int]`, *optional*, defaults to `(0, 0, 0)`):
            The RGB colour painted over the regions.
        normalized (`bool`, *optional*, defaults to `False`):
            Whether the coordinates are fractions of the width and height.

    Examples:

    ```python
    >>> from PIL import Image
    >>> Blackout([(0, 0, 2, 2)]).apply(Image.new("RGB", (4, 4), "white")).getpixel((1, 1))
    (0, 0, 0)
    ```
    """

    boxes: Any
    fill: tuple[int, int, int] = (0, 0, 0)
    normalized: bool = False

    def __post_init__(self) -> None:
        items = _split_boxes(self.boxes)
        if not items:
            raise ValueError("`boxes` is empty: Blackout needs at least one region")
        object.__setattr__(self, "boxes", tuple(_check_box(box) for box in items))
        object.__setattr__(self, "fill", _check_fill(self.fill))
        if self.normalized not in (True, False):
            raise ValueError(f"`normalized` (={self.normalized!r}) has to be a bool")
        object.__setattr__(self, "normalized", bool(self.normalized))

    @property
    def name(self) -> str:
        return "blackout"

    def apply(self, image: Image.Image, key: int = 0) -> Image.Image:
        return blackout(image, self.boxes, fill=self.fill, normalized=self.normalized)


# The CAL paper (appendix): "10 pieces in width and 20 in height"; (columns, rows) in PIL's (width, height) order.
PATCH_GRID = (10, 20)


@dataclass(frozen=True)
class PatchMask(VisualCondition):
    """
    Random patch masking (CAL's appendix): split the image into a grid of patches and paint a fraction of them black.

    The grid has `grid[0]` columns (along x, the width) and `grid[1]` rows (along y, the height), following PIL's
    `(width, height)` order. The default `(10, 20)` is the CAL paper's "10 pieces in width and 20 in height": 10
    patches across and 20 down (on a square image each patch is twice as wide as tall). Patch edges are at
    `floor(i * width / columns)` (likewise for rows), so patch sizes differ by at most one pixel. An image narrower
    (or shorter) than the grid uses one patch per pixel column (or row). Exactly `round(ratio * n)` of the `n`
    patches are painted (half rounds up, and at least one), chosen without replacement by a generator seeded with
    `(seed, key)`.

    Args:
        ratio (`float`):
            Fraction of the patches to paint, in `(0, 1]`. The paper uses 0.5, 0.7 and 0.9.
        grid (`tuple[int, int]`, *optional*, defaults to `(10, 20)`):
            `(columns, rows)` of the patch grid.
        seed (`int`, *optional*, defaults to `0`):
            Non-negative seed of the random choice of patches.
        fill (`tuple[int, int, int]`, *optional*, defaults to `(0, 0, 0)`):
            The RGB colour painted over the chosen patches.

    Examples:

    ```python
    >>> import numpy as np
    >>> from PIL import Image
    >>> masked = PatchMask(0.5, grid=(2, 2)).apply(Image.new("RGB", (4, 4), "white"))
    >>> int((np.asarray(masked) == 0).all(axis=2).sum())  # 2 of the 4 patches of 2x2 pixels
    8
    ```
    """

    ratio: float
    grid: tuple[int, int] = PATCH_GRID
    seed: int = 0
    fill: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if not _is_real(self.ratio) or not 0 < self.ratio <= 1:
            raise ValueError(f"`ratio` (={self.ratio!r}) has to be a number in (0, 1]")
        try:
            grid = tuple(self.grid)
            ok = len(grid) == 2 and all(_is_int(v) and v >= 1 for v in grid)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"`grid` (={self.grid!r}) has to be (columns, rows), two positive integers")
        object.__setattr__(self, "ratio", float(self.ratio))
        object.__setattr__(self, "grid", tuple(int(v) for v in grid))
        object.__setattr__(self, "seed", _check_seed("seed", self.seed))
        object.__setattr__(self, "fill", _check_fill(self.fill))

    @property
    def name(self) -> str:
        parts = [f"patch:{_fmt(self.ratio)}"]
        if self.grid != PATCH_GRID:
            parts.append(f"grid={self.grid[0]}x{self.grid[1]}")
        if self.seed != 0:
            parts.append(f"seed={self.seed}")
        if self.fill != (0, 0, 0):
            parts.append("fill={}/{}/{}".format(*self.fill))
        return ",".join(parts)

    def mask(self, size: tuple[int, int], key: int = 0) -> np.ndarray:
        """
        The boolean mask of the painted pixels for an image of the given size.

        Args:
            size (`tuple[int, int]`):
                The image size `(width, height)`.
            key (`int`, *optional*, defaults to `0`):
                Non-negative integer mixed into the seed (for example the sample index).

        Returns:
            `np.ndarray`: bool array of shape `(height, width)`.
        """
        width, height = _check_size(size)
        columns, rows = min(self.grid[0], width), min(self.grid[1], height)
        n = columns * rows
        k = min(n, max(1, math.floor(self.ratio * n + 0.5)))  # round half up, unlike round()
        chosen = np.zeros(n, dtype=bool)
        chosen[_rng(self.seed, key).choice(n, size=k, replace=False)] = True
        column_of_x = (np.arange(width) * columns) // width  # (W,)
        row_of_y = (np.arange(height) * rows) // height  # (H,)
        return chosen[row_of_y[:, None] * columns + column_of_x[None, :]]  # (H, W)

    @property
    def is_random(self) -> bool:
        return True

    def apply(self, image: Image.Image, key: int = 0) -> Image.Image:
        return _paint(image, self.mask(image.size, key), self.fill)


@dataclass(frozen=True)
class GaussianBlur(VisualCondition):
    """
    Gaussian blur of the whole image (CAL's appendix uses `sigma` 1 and 10), with PIL's `ImageFilter.GaussianBlur`,
    whose radius is the standard deviation in pixels.

    Args:
        sigma (`float`):
            Standard deviation of the Gaussian kernel in pixels, strictly positive.

    Examples:

    ```python
    >>> from PIL import Image
    >>> GaussianBlur(10).apply(Image.new("L", (32, 16))).size
    (32, 16)
    ```
    """

    sigma: float

    def __post_init__(self) -> None:
        if not _is_real(self.sigma) or self.sigma <= 0:
            raise ValueError(f"`sigma` (={self.sigma!r}) has to be a strictly positive number")
        object.__setattr__(self, "sigma", float(self.sigma))

    @property
    def name(self) -> str:
        return f"blur:{_fmt(self.sigma)}"

    def apply(self, image: Image.Image, key: int = 0) -> Image.Image:
        return to_rgb(image).filter(ImageFilter.GaussianBlur(radius=self.sigma))


@dataclass(frozen=True)
class DiffusionNoise(VisualCondition):
    """
    VCD's forward-diffusion noise: `x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps`, `eps ~ N(0, 1)`.

    The schedule is VCD's: `betas = sigmoid(linspace(-6, 6, total)) * (0.5e-2 - 1e-5) + 1e-5` and
    `abar = cumprod(1 - betas)`, indexed by `step` (VCD uses step 500 of 1000). VCD adds the noise to the processor's
    normalised tensor; here it is added to the raw RGB image mapped to `[-1, 1]` (`x_0 = pixel / 127.5 - 1`), then
    clipped to `[-1, 1]` and mapped back to uint8, so the condition stays a picture that any processor can take and
    does not depend on one processor's mean and std. At step 999 of 1000 about 28% of the signal remains.

    Args:
        step (`int`):
            The diffusion step `t`, in `[0, total - 1]`.
        total (`int`, *optional*, defaults to `1000`):
            The number of steps of the schedule, at least 1.
        seed (`int`, *optional*, defaults to `0`):
            Non-negative seed of the noise; the generator is seeded with `(seed, key)`.

    Examples:

    ```python
    >>> from PIL import Image
    >>> noisy = DiffusionNoise(500).apply(Image.new("RGB", (8, 8), "gray"))
    >>> noisy.mode, noisy.size
    ('RGB', (8, 8))
    ```
    """

    step: int
    total: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.total) or self.total < 1:
            raise ValueError(f"`total` (={self.total!r}) has to be a positive integer")
        if not _is_int(self.step) or not 0 <= self.step < self.total:
            raise ValueError(f"`step` (={self.step!r}) has to be an integer in [0, total - 1] = [0, {self.total - 1}]")
        object.__setattr__(self, "step", int(self.step))
        object.__setattr__(self, "total", int(self.total))
        object.__setattr__(self, "seed", _check_seed("seed", self.seed))

    @property
    def alpha_bar(self) -> float:
        """`float`: `abar_t`, the fraction of the signal's variance left at `step`."""
        betas = 1 / (1 + np.exp(-np.linspace(-6, 6, self.total))) * (0.5e-2 - 1e-5) + 1e-5  # (total,)
        return float(np.cumprod(1 - betas)[self.step])

    @property
    def name(self) -> str:
        parts = [f"noise:{self.step}"]
        if self.total != 1000:
            parts.append(f"total={self.total}")
        if self.seed != 0:
            parts.append(f"seed={self.seed}")
        return ",".join(parts)

    @property
    def is_random(self) -> bool:
        return True

    def apply(self, image: Image.Image, key: int = 0) -> Image.Image:
        x0 = np.asarray(to_rgb(image), dtype=np.float32) / 127.5 - 1  # (H, W, 3) in [-1, 1]
        eps = _rng(self.seed, key).standard_normal(x0.shape, dtype=np.float32)
        alpha_bar = self.alpha_bar
        xt = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps
        pixels = np.rint((np.clip(xt, -1, 1) + 1) * 127.5).astype(np.uint8)
        return Image.fromarray(pixels, mode="RGB")


def _parse_number(spec: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"condition {spec!r}: {text!r} is not a valid {kind.__name__}") from None


def _parse_options(spec: str, parts: list[str], allowed: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed or key in options:
            allowed_text = f"allowed: {', '.join(allowed)}" if allowed else "this condition takes no options"
            raise ValueError(f"condition {spec!r}: unknown or repeated option {part!r} ({allowed_text})")
        options[key] = value
    return options


def _parse_pair(spec: str, text: str, sep: str, count: int) -> tuple[int, ...]:
    values = text.split(sep)
    if len(values) != count:
        raise ValueError(f"condition {spec!r}: {text!r} has to be {count} integers separated by {sep!r}")
    return tuple(_parse_number(spec, v, int) for v in values)


def parse_condition(spec: str) -> VisualCondition:
    """
    Build a condition from a short text, for CLI flags. The text is case-insensitive and spaces are ignored.

    Grammar (`[...]` is optional; options come after the value, separated by commas, in any order):

    - `none`, `no-image`, `no_image` or `noimage`: [`NoImage`]
    - `patch:RATIO[,grid=COLUMNSxROWS][,seed=N][,fill=R/G/B]`: [`PatchMask`], e.g. `patch:0.5`, `patch:0.9,seed=3`
    - `blur:SIGMA`: [`GaussianBlur`], e.g. `blur:10`
    - `noise:STEP[,total=N][,seed=N]`: [`DiffusionNoise`], e.g. `noise:500`

    [`Blackout`] needs boxes, so it is built in Python (or by the CLI from its own box flags), not from a string.
    `parse_condition(condition.name) == condition` for every other condition.

    Args:
        spec (`str`):
            The text to parse.

    Returns:
        [`VisualCondition`]: the condition.

    Raises:
        `ValueError`: naming the text, if it does not follow the grammar or a parameter is out of range.

    Examples:

    ```python
    >>> parse_condition("patch:0.5")
    PatchMask(ratio=0.5, grid=(10, 20), seed=0, fill=(0, 0, 0))
    >>> parse_condition("noise:500,seed=1").name
    'noise:500,seed=1'
    ```
    """
    if not isinstance(spec, str):
        # ValueError like every other bad spec, so a CLI catches one exception type.
        raise ValueError(f"condition spec (={spec!r}) has to be a string such as 'patch:0.5'")  # noqa: TRY004
    text = "".join(spec.split()).lower()
    kind, _, rest = text.partition(":")
    if kind in ("none", "no-image", "no_image", "noimage") and not rest:
        return NoImage()
    if kind == "blackout":
        raise ValueError(f"condition {spec!r}: Blackout needs boxes; build `vcontrast.conditions.Blackout(boxes)`")
    if kind not in ("patch", "blur", "noise") or not rest:
        raise ValueError(
            f"condition {spec!r} is not one of 'none', 'patch:RATIO', 'blur:SIGMA', 'noise:STEP' "
            "(see `vcontrast.conditions.parse_condition`)"
        )
    value, *parts = rest.split(",")
    if kind == "blur":
        _parse_options(spec, parts, ())
        return GaussianBlur(_parse_number(spec, value, float))
    if kind == "patch":
        options = _parse_options(spec, parts, ("grid", "seed", "fill"))
        kwargs: dict[str, Any] = {}
        if "grid" in options:
            kwargs["grid"] = _parse_pair(spec, options["grid"], "x", 2)
        if "seed" in options:
            kwargs["seed"] = _parse_number(spec, options["seed"], int)
        if "fill" in options:
            kwargs["fill"] = _parse_pair(spec, options["fill"], "/", 3)
        return PatchMask(_parse_number(spec, value, float), **kwargs)
    options = _parse_options(spec, parts, ("total", "seed"))
    kwargs = {key: _parse_number(spec, options[key], int) for key in options}
    return DiffusionNoise(_parse_number(spec, value, int), **kwargs)
