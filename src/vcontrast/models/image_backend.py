"""Which image-processing backend a processor uses, and asking for one.

transformers 5 gives most image processors two backends: PIL (`CLIPImageProcessorPil`) and torchvision
(`CLIPImageProcessor`). `from_pretrained` picks torchvision when it is installed and PIL otherwise, and the two
resize differently: on the same checkpoint and image, pixel values can differ by about one grey level, which moved
CRG scores of a tiny test model by up to 3e-2 nats. So a checkpoint gives different numbers on a machine with
torchvision (a typical GPU image) than on one without (these CPU machines). `load_model(..., image_backend=...)` pins
one, and the eval runner records the backend it ran with, so that a resumed run never mixes the two.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_BACKENDS", "backfill_image_backend", "check_image_backend", "image_backend_of"]

logger = logging.getLogger(__name__)

IMAGE_BACKENDS = ("pil", "torchvision")
# The base classes transformers' image processors derive from, per backend.
_BACKEND_CLASSES = {"PilBackend": "pil", "TorchvisionBackend": "torchvision"}


def check_image_backend(backend: str | None) -> str | None:
    """`backend` if it is one this machine can run (None, transformers' choice, stays None); raises ValueError naming
    the problem otherwise: an unknown name, or "torchvision" where torchvision is not installed (transformers would
    quietly fall back to PIL).

    Examples:

    ```python
    >>> check_image_backend("pil")
    'pil'
    >>> check_image_backend("opencv")
    Traceback (most recent call last):
    ValueError: image backend 'opencv' is not one of 'pil', 'torchvision' (or leave it out: transformers' choice)
    ```
    """
    if backend is None:
        return None
    if backend not in IMAGE_BACKENDS:
        choices = ", ".join(repr(name) for name in IMAGE_BACKENDS)
        raise ValueError(f"image backend {backend!r} is not one of {choices} (or leave it out: transformers' choice)")
    if backend == "torchvision":
        from transformers.utils import is_torchvision_available

        if not is_torchvision_available():
            raise ValueError(
                "image backend 'torchvision' needs torchvision, which is not installed here; install it, or use 'pil'"
            )
    return backend


def image_backend_of(processor: Any) -> str | None:
    """The backend ("pil" or "torchvision") of a processor's image processor (or of an image processor itself); None
    if it has none or derives from neither base class."""
    image_processor = getattr(processor, "image_processor", processor)
    if image_processor is None:
        return None
    for cls in type(image_processor).__mro__:
        if cls.__name__ in _BACKEND_CLASSES:
            return _BACKEND_CLASSES[cls.__name__]
    return None


def backfill_image_backend(record: Mapping, current: Mapping, path: Path, taken_as: str) -> dict:
    """`record` (a run.json or a provenance record read from `path`) with `current`'s "image_backend" filled in when
    it was written before vcontrast recorded the field, so that it still resumes; a warning says so, `taken_as` (e.g.
    "resuming it as a run with") naming what the record is taken for."""
    if "image_backend" in record or "image_backend" not in current:
        return dict(record)
    backend = current["image_backend"]
    logger.warning(
        "%s was written before vcontrast recorded image_backend; %s image_backend=%r",
        path,
        taken_as,
        backend,
    )
    return {**record, "image_backend": backend}
