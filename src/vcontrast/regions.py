"""Regions of an image: parse and validate boxes, and black them out in raw pixel space.

CRG's contrast image is the reference image with its key regions painted black. The paint goes on the raw RGB pixels
(uint8), before any processor resizes or normalises them, so that a black region reaches the model as the processor's
encoding of black (for example, negative `pixel_values` after mean/std normalisation), and the contrast image has the
same size, hence the same image-token layout, as the reference.

Box convention: `(x0, y0, x1, y1)` in pixels (ints or floats), x to the right and y down, as PIL's `crop` uses. Pixel
`(x, y)` is covered when `x0 <= x < x1` and `y0 <= y < y1` after rounding outward (`floor(x0)`, `floor(y0)`,
`ceil(x1)`, `ceil(y1)`), so a float box covers every pixel it touches. With `normalized=True`, coordinates are
fractions of the width and height in `[0, 1]`.

Regions: a region is a box, or a mask of the image's size: a boolean array or tensor of shape `(height, width)`
(dtype `bool`: an integer or float array is read as boxes, so that a `(K, 4)` array of 0s and 1s can never be taken
for a mask; convert a 0/1 mask with `mask.astype(bool)`), or a PIL mask image (mode `"1"`, or mode `"L"` with only
the values 0 and 255, as segmentation models save them). `blackout_mask`, which takes one mask and nothing else,
also accepts 0/1 numbers. `blackout` and `blackout_each` take boxes, masks or a mix of both and paint masks exactly,
pixel for pixel ([`region_masks`]).

This module needs only numpy and PIL (no torch), though it accepts torch tensors as boxes and masks.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

__all__ = [
    "blackout",
    "blackout_all",
    "blackout_each",
    "blackout_mask",
    "box_iou",
    "combined_box",
    "draw_boxes",
    "mask_box",
    "open_image",
    "parse_boxes",
    "region_mask",
    "region_masks",
    "split_regions",
    "to_rgb",
]

Box = tuple[float, float, float, float]

# Float boxes that come from normalised coordinates pick up rounding error (0.7 * 10 == 7.000000000000001); without
# this tolerance, outward rounding would grow such a box by a whole pixel.
_EPS = 1e-6
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """
    Convert an image of any common PIL mode to an 8-bit RGB image of the same size, as the model will see it.

    Transparency (modes RGBA, LA, PA, and P or L with a `transparency` entry) is composited onto a white background,
    the way transformers' `convert_to_rgb` does it, so the reference image built here is the one the processor would
    build itself. 16-bit modes (`I;16`, `I;16B`, `I;16L`, `I;16N`) and the 32-bit integer mode `I` are read as values
    in `[0, 65535]` and scaled to `[0, 255]` (PIL's own conversion would clip them at 255 instead); values of mode `I`
    outside that range are clipped. Every other mode goes through PIL's `convert("RGB")`. The input is never modified:
    the result is always a new image, even when the input is already RGB.

    Args:
        image (`PIL.Image.Image`):
            The image to convert.

    Returns:
        `PIL.Image.Image`: a new image in mode `"RGB"`, of the same size.

    Examples:

    ```python
    >>> from PIL import Image
    >>> to_rgb(Image.new("LA", (4, 3), (128, 0))).getpixel((0, 0))  # fully transparent -> white
    (255, 255, 255)
    ```
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"`image` (={image!r}) has to be a PIL.Image.Image")
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)  # (H, W)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """
    Read an image file as the model will see it: [`to_rgb`] of the decoded file (the one way vcontrast opens images).

    Args:
        path (`str` or `os.PathLike`):
            The image file.

    Returns:
        `PIL.Image.Image`: a new 8-bit RGB image, decoded in full (the file is closed).

    Raises:
        `ValueError`: naming the path, if there is no such file, it cannot be decoded or it has so many pixels that
        PIL refuses to decode it (a decompression bomb).

    Examples:

    ```python
    >>> open_image("kitchen.png").mode  # doctest: +SKIP
    'RGB'
    ```
    """
    if not Path(path).is_file():
        raise ValueError(f"image file {str(path)!r} not found")
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"image {str(path)!r} is too large to decode safely ({error}); resize it below "
            f"{Image.MAX_IMAGE_PIXELS} pixels"
        ) from error
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from error


def _to_numpy(value: Any) -> Any:
    # Torch tensors (possibly on an accelerator, possibly requiring grad) without importing torch here.
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return value


def _box_repr(box: Any) -> str:
    if isinstance(box, np.ndarray):
        return repr(tuple(box.tolist()))
    return repr(box)


def _check_box(box: Any) -> Box:
    # Checks that do not need the image size: length, numbers, finiteness, orientation.
    box = _to_numpy(box)
    try:
        values = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"box {_box_repr(box)} has to be 4 numbers (x0, y0, x1, y1)") from None
    if values.ndim >= 2:  # a numeric array in a list of regions: a mask that is not boolean
        raise ValueError(
            f"a region of shape {values.shape} is neither a box (4 numbers) nor a mask: a mask region has to be a "
            "boolean (H, W) array or tensor; convert a 0/1 mask with `mask.astype(bool)` (numpy) or `mask.bool()`"
        )
    if values.shape != (4,):
        raise ValueError(f"box {_box_repr(box)} has to be 4 numbers (x0, y0, x1, y1), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"box {_box_repr(box)} has a NaN or infinite coordinate")
    x0, y0, x1, y1 = values.tolist()
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {_box_repr(box)} is inverted: it needs x0 <= x1 and y0 <= y1 (boxes are xyxy)")
    if x1 == x0 or y1 == y0:
        raise ValueError(f"box {_box_repr(box)} has zero area")
    return (x0, y0, x1, y1)


def _split_boxes(boxes: Any) -> list[Any]:
    # One box (4 numbers) or a sequence of boxes -> a list of boxes, each still in its original form for messages.
    boxes = _to_numpy(boxes)
    if isinstance(boxes, np.ndarray):
        if boxes.ndim == 1:
            return [boxes]
        if boxes.ndim == 2 and boxes.shape[1] == 4:
            return list(boxes)
        # Never read as masks: a (K, 4) array of 0s and 1s would be ambiguous, so only boolean arrays are masks.
        raise ValueError(
            f"an array of shape {boxes.shape} and dtype {boxes.dtype} is neither one box (4,) nor boxes (K, 4); a "
            "mask region has to be a boolean (H, W) array or tensor, or (K, H, W) for several: convert a 0/1 mask "
            "with `mask.astype(bool)` (numpy) or `mask.bool()` (torch)"
        )
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence):
        # ValueError like every other malformed box, so callers catch one exception type for bad regions.
        raise ValueError(f"`boxes` (={boxes!r}) has to be one box (x0, y0, x1, y1) or a sequence of boxes")  # noqa: TRY004
    if len(boxes) > 0 and all(np.ndim(_to_numpy(v)) == 0 for v in boxes):
        return [boxes]
    return list(boxes)


def _check_size(size: Any) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
        ok = width > 0 and height > 0 and tuple(size) == (width, height)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"`size` (={size!r}) has to be (width, height), two positive integers")
    return width, height


def _check_fill(fill: Any) -> tuple[int, int, int]:
    try:
        values = tuple(fill)
        ok = len(values) == 3 and all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"`fill` (={fill!r}) has to be an RGB triple of integers in [0, 255]")
    return tuple(int(v) for v in values)


def parse_boxes(boxes: Any, size: tuple[int, int], normalized: bool = False) -> np.ndarray:
    """
    Validate boxes, scale them to pixels, round them outward and clip them to the image.

    Args:
        boxes (`Sequence[float]`, `Sequence[Sequence[float]]`, `np.ndarray` or `torch.Tensor`):
            One box `(x0, y0, x1, y1)` or a sequence of boxes (shape `(4,)` or `(K, 4)`), ints or floats.
        size (`tuple[int, int]`):
            The image size `(width, height)`, as PIL's `Image.size` gives it.
        normalized (`bool`, *optional*, defaults to `False`):
            Whether the coordinates are fractions of the width and height. There is no auto-detection: `(0, 0, 1, 1)`
            is a valid one-pixel box, so the caller says which convention the boxes use. Float pixel boxes that all lie
            inside `[0, 1]` are probably normalised by mistake, and a warning is logged.

    Returns:
        `np.ndarray`: int64 array of shape `(K, 4)`, pixel boxes with `0 <= x0 < x1 <= width` and
        `0 <= y0 < y1 <= height`, covering pixels `x0 <= x < x1`, `y0 <= y < y1`. An empty sequence gives `(0, 4)`.

    Raises:
        `ValueError`: naming the box, if a box does not have 4 coordinates, has a NaN or infinite coordinate, is
        inverted (`x1 < x0` or `y1 < y0`), has zero area, or lies entirely outside the image.

    Examples:

    ```python
    >>> parse_boxes((1.2, 1.7, 3.1, 3.0), size=(8, 8)).tolist()
    [[1, 1, 4, 3]]
    >>> parse_boxes([(-2, 0, 4, 4), (0.5, 0.5, 1.0, 1.0)], size=(8, 8), normalized=True).tolist()
    [[0, 0, 8, 8], [4, 4, 8, 8]]
    ```
    """
    width, height = _check_size(size)
    items = _split_boxes(boxes)
    if not items:
        return np.zeros((0, 4), dtype=np.int64)
    values = np.array([_check_box(box) for box in items], dtype=np.float64)  # (K, 4)
    if normalized:
        values = values * np.array([width, height, width, height], dtype=np.float64)
    elif np.all((values >= 0) & (values <= 1)) and not np.all(values == np.round(values)):
        _warn_normalized_once()
    low = np.floor(values[:, :2] + _EPS)
    high = np.maximum(np.ceil(values[:, 2:] - _EPS), low + 1)
    pixels = np.concatenate([low, high], axis=1)  # (K, 4), outward-rounded
    clipped = np.clip(pixels, 0, np.array([width, height, width, height])).astype(np.int64)
    outside = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise ValueError(f"box {_box_repr(items[index])} lies entirely outside the image of size {(width, height)}")
    return clipped


# Boxes inside [0, 1] on an image at least this many pixels a side are taken for normalised coordinates (see below).
_NORMALIZED_GUESS_MIN_SIDE = 8


def _check_pixel_boxes(boxes: Any, size: tuple[int, int], option: str = "`normalized=True`") -> None:
    # For callers whose boxes are pixels unless told otherwise (CRG): every box inside [0, 1] on an image of 8 pixels
    # or more a side would black out at most the corner pixel; such boxes are normalised coordinates given as pixels,
    # a mistake that otherwise passes silently. (`parse_boxes` cannot refuse them: (0, 0, 1, 1) is a valid pixel box.)
    items = _split_boxes(boxes)
    width, height = _check_size(size)
    if not items or min(width, height) < _NORMALIZED_GUESS_MIN_SIDE:
        return
    values = np.array([_check_box(box) for box in items], dtype=np.float64)  # (K, 4)
    if np.all((values >= 0) & (values <= 1)):
        shown = ", ".join(_box_repr(box) for box in items[:3]) + (", ..." if len(items) > 3 else "")
        raise ValueError(
            f"every box ({shown}) lies inside [0, 1] on an image of size {(width, height)}, but boxes are read as "
            f"pixels: pass {option} if they are fractions of the width and height, or give pixel boxes (a one-pixel "
            "region is better given as a mask)"
        )


@functools.cache
def _warn_normalized_once() -> None:
    # Once per process: an eval loop over thousands of items would repeat it for each.
    logger.warning("All boxes lie inside [0, 1] pixels; pass `normalized=True` if they are fractions of the size.")


def region_mask(size: tuple[int, int], boxes: Any, normalized: bool = False) -> np.ndarray:
    """
    Boolean mask of the pixels covered by the union of boxes.

    Args:
        size (`tuple[int, int]`):
            The image size `(width, height)`.
        boxes (`Sequence[float]`, `Sequence[Sequence[float]]`, `np.ndarray` or `torch.Tensor`):
            One box or a sequence of boxes, as [`parse_boxes`] takes them.
        normalized (`bool`, *optional*, defaults to `False`):
            Whether the coordinates are fractions of the width and height.

    Returns:
        `np.ndarray`: bool array of shape `(height, width)`, `True` inside any box (all `False` for no boxes).

    Examples:

    ```python
    >>> region_mask((4, 3), (1, 0, 3, 2)).astype(int).tolist()
    [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    ```
    """
    width, height = _check_size(size)
    mask = np.zeros((height, width), dtype=bool)
    # One slice assignment per box (K is small), not per pixel.
    for x0, y0, x1, y1 in parse_boxes(boxes, (width, height), normalized=normalized).tolist():
        mask[y0:y1, x0:x1] = True
    return mask


def _check_mask(mask: Any, size: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(_to_numpy(mask))
    width, height = size
    if mask.shape != (height, width):
        raise ValueError(
            f"`mask` has shape {mask.shape}, expected (height, width) = {(height, width)} for an image of size "
            f"{(width, height)}"
        )
    if mask.dtype != bool:
        if not (np.issubdtype(mask.dtype, np.number) and np.isin(mask, (0, 1)).all()):
            raise ValueError(f"`mask` has to be boolean (or 0/1), got dtype {mask.dtype}")
        mask = mask.astype(bool)
    return mask


def _is_mask(region: Any) -> bool:
    # A mask is a PIL image or a 2-D boolean array. A numeric 2-D array is a list of boxes, never a mask, even when
    # it holds only 0s and 1s: a (K, 4) box array of 0s and 1s would otherwise be ambiguous.
    if isinstance(region, Image.Image):
        return True
    value = _to_numpy(region)
    return isinstance(value, np.ndarray) and value.dtype == bool and value.ndim == 2


def _mask_image_array(mask: Image.Image) -> np.ndarray:
    if mask.mode == "1":
        return np.array(mask, dtype=bool)
    if mask.mode != "L":
        raise ValueError(f"a mask image has to be mode '1' or 'L' (0 = keep, 255 = region), got mode {mask.mode!r}")
    values = np.array(mask)
    extra = sorted(set(np.unique(values).tolist()) - {0, 255})
    if extra:
        raise ValueError(
            f"a mode-'L' mask image may hold only 0 and 255, found {extra[:5]}: binarise it first, e.g. "
            "`mask.point(lambda v: 255 if v >= 128 else 0)`"
        )
    return values == 255


def split_regions(regions: Any) -> list[Any]:
    """
    Split a regions argument into a list of single regions (boxes and masks, unchecked).

    Accepted: one box `(x0, y0, x1, y1)`; one mask (a PIL mask image or a 2-D boolean array/tensor); a `(K, H, W)`
    boolean array of K masks; a `(K, 4)` array of boxes; or a sequence mixing boxes and masks.

    Examples:

    ```python
    >>> import numpy as np
    >>> len(split_regions([(0, 0, 2, 2), np.ones((4, 4), dtype=bool)]))
    2
    ```
    """
    if _is_mask(regions):
        return [regions]
    value = _to_numpy(regions)
    if isinstance(value, np.ndarray) and value.dtype == bool:
        if value.ndim == 3:
            return list(value)
        raise ValueError(f"boolean regions have to be one (H, W) mask or (K, H, W) masks, got shape {value.shape}")
    if isinstance(regions, Sequence) and not isinstance(regions, (str, bytes)) and any(_is_mask(r) for r in regions):
        return list(regions)
    return _split_boxes(regions)


def region_masks(size: tuple[int, int], regions: Any, normalized: bool = False) -> list[np.ndarray]:
    """
    One boolean mask per region (boxes and masks, see [`split_regions`]), each checked against the image size.

    Args:
        size (`tuple[int, int]`):
            The image size `(width, height)`.
        regions:
            Boxes, masks, or a mix; see [`split_regions`].
        normalized (`bool`, *optional*, defaults to `False`):
            Whether box coordinates are fractions of the width and height (masks are in pixels).

    Returns:
        `list[np.ndarray]`: bool arrays of shape `(height, width)`, in the order of `regions`.

    Raises:
        `ValueError`: naming the region, for an invalid box, a mask of another size, a mask that is not binary, or
        an empty mask.

    Examples:

    ```python
    >>> [m.sum() for m in region_masks((4, 4), [(0, 0, 2, 2), (0, 0, 4, 1)])]
    [4, 4]
    ```
    """
    width, height = _check_size(size)
    masks = []
    for region in split_regions(regions):
        if _is_mask(region):
            mask = _mask_image_array(region) if isinstance(region, Image.Image) else region
            mask = _check_mask(mask, (width, height))
            if not mask.any():
                raise ValueError("a region mask is empty: it marks no pixel to black out")
        else:
            mask = region_mask((width, height), [region], normalized=normalized)
        masks.append(mask)
    return masks


def mask_box(mask: Any) -> Box:
    """
    The tight pixel box `(x0, y0, x1, y1)` of the True pixels of a (H, W) mask (x1, y1 exclusive).

    Examples:

    ```python
    >>> import numpy as np
    >>> mask = np.zeros((4, 5), dtype=bool)
    >>> mask[1:3, 2] = True
    >>> mask_box(mask)
    (2.0, 1.0, 3.0, 3.0)
    ```
    """
    mask = np.asarray(_to_numpy(mask), dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("the mask is empty: it has no box")
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _paint(image: Image.Image, mask: np.ndarray, fill: tuple[int, int, int]) -> Image.Image:
    pixels = np.array(to_rgb(image))  # (H, W, 3) uint8, a copy
    pixels[mask] = fill
    return Image.fromarray(pixels, mode="RGB")


def blackout(
    image: Image.Image, boxes: Any, fill: tuple[int, int, int] = (0, 0, 0), normalized: bool = False
) -> Image.Image:
    """
    CRG's contrast image: the image with the union of the regions painted black (or `fill`).

    Args:
        image (`PIL.Image.Image`):
            The reference image, any mode [`to_rgb`] handles. It is not modified.
        boxes (`Sequence[float]`, `Sequence[Sequence[float]]`, `np.ndarray`, `torch.Tensor` or masks):
            One box `(x0, y0, x1, y1)`, a sequence of boxes (see [`parse_boxes`]), or masks, alone or mixed with
            boxes (see [`region_masks`]); masks are painted exactly.
        fill (`tuple[int, int, int]`, *optional*, defaults to `(0, 0, 0)`):
            The RGB colour painted over the regions.
        normalized (`bool`, *optional*, defaults to `False`):
            Whether the coordinates are fractions of the width and height.

    Returns:
        `PIL.Image.Image`: a new RGB image of the same size.

    Raises:
        `ValueError`: if there are no boxes (CRG needs at least one region), or a box is invalid.

    Examples:

    ```python
    >>> from PIL import Image
    >>> contrast = blackout(Image.new("RGB", (8, 8), "white"), [(0, 0, 4, 4), (4, 4, 8, 8)])
    >>> contrast.getpixel((1, 1)), contrast.getpixel((6, 1))
    ((0, 0, 0), (255, 255, 255))
    ```
    """
    fill = _check_fill(fill)
    masks = region_masks(image.size, boxes, normalized=normalized)
    if not masks:
        raise ValueError("`boxes` is empty: no regions to black out (CRG needs at least one region)")
    return _paint(image, np.logical_or.reduce(masks), fill)


def blackout_each(
    image: Image.Image, boxes: Any, fill: tuple[int, int, int] = (0, 0, 0), normalized: bool = False
) -> list[Image.Image]:
    """
    One contrast image per region: image `i` has only region `i` painted black (used to re-rank region proposals).

    Args:
        image (`PIL.Image.Image`):
            The reference image, any mode [`to_rgb`] handles. It is not modified.
        boxes (`Sequence[float]`, `Sequence[Sequence[float]]`, `np.ndarray`, `torch.Tensor` or masks):
            One box, a sequence of boxes, or masks (alone or mixed with boxes); see [`region_masks`].
        fill (`tuple[int, int, int]`, *optional*, defaults to `(0, 0, 0)`):
            The RGB colour painted over each region.
        normalized (`bool`, *optional*, defaults to `False`):
            Whether the coordinates are fractions of the width and height.

    Returns:
        `list[PIL.Image.Image]`: one new RGB image of the same size per box, in the order of `boxes`.

    Raises:
        `ValueError`: if there are no boxes, or a box is invalid.

    Examples:

    ```python
    >>> from PIL import Image
    >>> images = blackout_each(Image.new("RGB", (8, 8), "white"), [(0, 0, 4, 4), (4, 4, 8, 8)])
    >>> [im.getpixel((1, 1)) for im in images]
    [(0, 0, 0), (255, 255, 255)]
    ```
    """
    fill = _check_fill(fill)
    masks = region_masks(image.size, boxes, normalized=normalized)
    if not masks:
        raise ValueError("`boxes` is empty: no regions to black out (CRG needs at least one region)")
    rgb = np.array(to_rgb(image))  # (H, W, 3) uint8, converted once
    images = []
    for mask in masks:
        pixels = rgb.copy()
        pixels[mask] = fill
        images.append(Image.fromarray(pixels, mode="RGB"))
    return images


def blackout_all(image: Image.Image, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """
    The whole image painted black (or `fill`), same size as `image`.

    Args:
        image (`PIL.Image.Image`):
            The reference image. Only its size is used.
        fill (`tuple[int, int, int]`, *optional*, defaults to `(0, 0, 0)`):
            The RGB colour of the result.

    Returns:
        `PIL.Image.Image`: a new RGB image of the same size.

    Examples:

    ```python
    >>> from PIL import Image
    >>> blackout_all(Image.new("L", (5, 2), 200)).getextrema()
    ((0, 0), (0, 0), (0, 0))
    ```
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"`image` (={image!r}) has to be a PIL.Image.Image")
    return Image.new("RGB", image.size, _check_fill(fill))


def blackout_mask(image: Image.Image, mask: Any, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """
    Paint the pixels of a boolean mask (for example a segmentation mask) black (or `fill`).

    Args:
        image (`PIL.Image.Image`):
            The reference image, any mode [`to_rgb`] handles. It is not modified.
        mask (`np.ndarray` or `torch.Tensor`):
            Boolean (or 0/1) array of shape `(height, width)`; `True` marks the pixels to paint.
        fill (`tuple[int, int, int]`, *optional*, defaults to `(0, 0, 0)`):
            The RGB colour painted over the mask.

    Returns:
        `PIL.Image.Image`: a new RGB image of the same size.

    Raises:
        `ValueError`: if the mask has the wrong shape, is not boolean, or is empty (no region).

    Examples:

    ```python
    >>> import numpy as np
    >>> from PIL import Image
    >>> mask = np.zeros((2, 3), dtype=bool)
    >>> mask[0, 0] = True
    >>> blackout_mask(Image.new("RGB", (3, 2), "white"), mask).getpixel((0, 0))
    (0, 0, 0)
    ```
    """
    fill = _check_fill(fill)
    mask = _check_mask(mask, image.size)
    if not mask.any():
        raise ValueError("`mask` is empty: no region to black out (CRG needs at least one region)")
    return _paint(image, mask, fill)


def combined_box(boxes: Any) -> Box:
    """
    The smallest box enclosing all the boxes (CRG's "one combined box" variant, its Table 5).

    The boxes are checked but neither scaled nor clipped, so the result is in the boxes' own coordinates (pixels or
    normalised).

    Args:
        boxes (`Sequence[float]`, `Sequence[Sequence[float]]`, `np.ndarray` or `torch.Tensor`):
            One box or a non-empty sequence of boxes.

    Returns:
        `tuple[float, float, float, float]`: `(min x0, min y0, max x1, max y1)`.

    Raises:
        `ValueError`: if there are no boxes, or a box is invalid.

    Examples:

    ```python
    >>> combined_box([(0, 2, 4, 4), (3, 1, 6, 3)])
    (0.0, 1.0, 6.0, 4.0)
    ```
    """
    items = _split_boxes(boxes)
    if not items:
        raise ValueError("`boxes` is empty: there is no box to enclose")
    values = np.array([_check_box(box) for box in items])  # (K, 4)
    return (*values[:, :2].min(axis=0).tolist(), *values[:, 2:].max(axis=0).tolist())


def box_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """
    Pairwise intersection over union of two sets of `(x0, y0, x1, y1)` boxes (the one IoU of vcontrast: the
    benchmark metrics and the proposals' non-maximum suppression use it).

    Args:
        boxes1 (`(N, 4)` array-like, `np.ndarray` or `torch.Tensor`):
            Boxes; one box of 4 numbers counts as `N = 1`.
        boxes2 (`(M, 4)` array-like, `np.ndarray` or `torch.Tensor`):
            Boxes.

    Returns:
        `np.ndarray`: float64 of shape `(N, M)`; 0 where the union is empty (degenerate boxes).

    Examples:

    ```python
    >>> box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [0, 0, 2, 2]]).round(4).tolist()
    [[0.1429, 1.0]]
    ```
    """
    a = np.asarray(_to_numpy(boxes1), dtype=np.float64).reshape(-1, 4)  # (N, 4)
    b = np.asarray(_to_numpy(boxes2), dtype=np.float64).reshape(-1, 4)  # (M, 4)
    return _iou(a[:, None, :], b[None, :, :])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # IoU of float boxes (..., 4) against boxes (..., 4), broadcast: (N, 1, 4) x (1, M, 4) gives the pairwise
    # matrix, two (N, 4) arrays the row-wise IoUs without building an (N, N) matrix.
    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)

    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def draw_boxes(
    image: Image.Image,
    boxes: Any,
    color: tuple[int, int, int] = (255, 0, 0),
    width: int = 2,
    normalized: bool = False,
) -> Image.Image:
    """
    Draw box outlines on a copy of the image, for pictures (the outline lies inside each box's pixels).

    Args:
        image (`PIL.Image.Image`):
            The image, any mode [`to_rgb`] handles. It is not modified.
        boxes (`Sequence[float]`, `Sequence[Sequence[float]]`, `np.ndarray` or `torch.Tensor`):
            One box or a sequence of boxes (may be empty); see [`parse_boxes`].
        color (`tuple[int, int, int]`, *optional*, defaults to `(255, 0, 0)`):
            The RGB colour of the outlines.
        width (`int`, *optional*, defaults to `2`):
            The outline width in pixels, at least 1.
        normalized (`bool`, *optional*, defaults to `False`):
            Whether the coordinates are fractions of the width and height.

    Returns:
        `PIL.Image.Image`: a new RGB image of the same size.

    Examples:

    ```python
    >>> from PIL import Image
    >>> pic = draw_boxes(Image.new("RGB", (8, 8)), [(2, 2, 6, 6)], width=1)
    >>> pic.getpixel((2, 2)), pic.getpixel((3, 3))
    ((255, 0, 0), (0, 0, 0))
    ```
    """
    color = _check_fill(color)
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"`width` (={width!r}) has to be a positive integer")
    picture = to_rgb(image)
    draw = ImageDraw.Draw(picture)
    for x0, y0, x1, y1 in parse_boxes(boxes, image.size, normalized=normalized).tolist():
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=color, width=int(width))
    return picture
