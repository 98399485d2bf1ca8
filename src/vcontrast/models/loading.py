"""Load a supported VLM and its processor from a local folder (or the shipped toy model), the transformers way."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vcontrast.models import get_adapter

logger = logging.getLogger(__name__)


def load_model(
    path: str | Path | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
):
    """`(model, processor)` from `path` with `AutoModelForImageTextToText` / `AutoProcessor`, in eval mode.

    Args:
        path (`str | Path | None`): a folder written by `save_pretrained` (or a hub name where the hub is
            reachable). None loads the toy model shipped with vcontrast.
        dtype (`torch.dtype | str | None`, *optional*): e.g. `torch.bfloat16` or `"bfloat16"`; None (or `"auto"`)
            keeps the checkpoint's dtype. Applies to the toy model too.
        device (`str | torch.device | None`, *optional*): where to put the model; None leaves it on the CPU.

    Raises:
        ValueError: if the folder does not exist or the model's family is not supported.

    Examples:

    ```python
    >>> model, processor = load_model("checkpoints/llava-1.5-7b-hf", dtype="bfloat16", device="cuda")
    ```
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if path is None:
        from vcontrast.toy import load

        model, processor = load(device=device) if device is not None else load()
        if dtype is not None and dtype != "auto":
            model = model.to(_torch_dtype(dtype))
        return model, processor
    local = Path(path)
    if not local.exists() and (local.is_absolute() or str(path).startswith(".")):
        raise ValueError(f"model path {str(path)!r} does not exist")
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    get_adapter(model)  # fail early, naming the supported families
    processor = AutoProcessor.from_pretrained(str(path))
    if device is not None:
        model = model.to(device)
    logger.info("loaded %s (%s) from %s", type(model).__name__, model.config.model_type, path)
    return model.eval(), processor


@dataclass
class ModelSupport:
    """How vcontrast supports a model: its class, `model_type`, the adapter it gets (None if refused), whether that
    adapter's parity suite runs in vcontrast's tests, and the refusal message where there is one."""

    model_class: str
    model_type: str
    adapter: str | None
    tested: bool
    refusal: str | None = None


def model_support(path: str | Path) -> ModelSupport:
    """Which adapter the model in `path` would get, read from its config alone (the model is built on the meta
    device: no weights are loaded, nothing is allocated).

    Raises:
        ValueError: if the folder does not exist or holds no image-text-to-text model config.

    Examples:

    ```python
    >>> model_support("checkpoints/llava-1.5-7b-hf")
    ModelSupport(model_class='LlavaForConditionalGeneration', model_type='llava', adapter='LlavaAdapter', tested=True)
    ```
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    local = Path(path)
    if not local.exists() and (local.is_absolute() or str(path).startswith(".")):
        raise ValueError(f"model path {str(path)!r} does not exist")
    config = AutoConfig.from_pretrained(str(path))
    try:
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
    except ValueError as error:
        raise ValueError(f"{path}: not an image-text-to-text model ({config.model_type!r}): {error}") from error
    try:
        adapter = get_adapter(model)
    except ValueError as error:
        return ModelSupport(type(model).__name__, config.model_type, None, False, str(error))
    return ModelSupport(type(model).__name__, config.model_type, type(adapter).__name__, adapter.tested)


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    # `from_pretrained` reads dtype names itself; `Module.to` needs the torch.dtype.
    value = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"`dtype` (={dtype!r}) has to be a torch dtype or its name, such as 'bfloat16'")  # noqa: TRY004 (one error type for bad input)
    return value
