"""Load a supported VLM and its processor from a local folder (or the shipped toy model), the transformers way.

Everything about the user's `--model` and `--device` is checked here before any weights are read, so that a typo,
a broken folder or a device this machine lacks ends in one `ValueError` that names it and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from vcontrast.models import get_adapter, supported_model_types
from vcontrast.models.image_backend import check_image_backend, image_backend_of

logger = logging.getLogger(__name__)

# Checkpoints smaller than this load without transformers' "Loading weights" progress bar (it flashes by).
QUIET_LOAD_BYTES = 1 << 30
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_model(
    path: str | Path | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    image_backend: str | None = None,
):
    """`(model, processor)` from `path` with `AutoModelForImageTextToText` / `AutoProcessor`, in eval mode.

    Args:
        path (`str | Path | None`): a folder written by `save_pretrained` (or a hub name where the hub is
            reachable). None loads the toy model shipped with vcontrast.
        dtype (`torch.dtype | str | None`, *optional*): e.g. `torch.bfloat16` or `"bfloat16"`; None (or `"auto"`)
            keeps the checkpoint's dtype. Applies to the toy model too.
        device (`str | torch.device | None`, *optional*): where to put the model; None leaves it on the CPU.
        image_backend (`str | None`, *optional*): the image processor's backend, "pil" or "torchvision"; None takes
            transformers' choice (torchvision where it is installed). The two resize differently, so pin one to
            compare numbers across machines (`vcontrast.models.image_backend`).

    Raises:
        ValueError: before any weights load, if the device does not exist on this machine, the folder does not
            exist (a path-like name is never sent to the hub), its config.json is missing or broken, its family is
            not supported, a weights file is truncated, the processor files are missing or the image backend is
            unknown, not installed or not one the checkpoint's image processor has; or if a hub name cannot be
            reached.

    Examples:

    ```python
    >>> model, processor = load_model("checkpoints/llava-1.5-7b-hf", dtype="bfloat16", device="cuda")
    ```
    """
    from transformers import AutoModelForImageTextToText

    device = check_device(device)
    torch_dtype = _torch_dtype(dtype) if dtype is not None and dtype != "auto" else None
    if path is None:
        from vcontrast.toy import load

        given = {k: v for k, v in (("device", device), ("image_backend", image_backend)) if v is not None}
        model, processor = load(**given)
        return (model.to(torch_dtype) if torch_dtype is not None else model), processor
    source = check_model_source(path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    processor = load_processor(source, image_backend=image_backend)  # the cheap half first: fails fast
    try:
        with quiet_progress(Path(source).is_dir() and _weights_bytes(Path(source)) < QUIET_LOAD_BYTES):
            model = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as error:  # "not a valid model identifier", a missing file on the hub, custom code
        raise _load_error("model", path, error) from error
    get_adapter(model)  # hub models: their config was not read before
    if device is not None:
        model = model.to(device)
    logger.info("loaded %s (%s) from %s", type(model).__name__, model.config.model_type, path)
    return model.eval(), processor


def load_processor(path: str | Path, *, image_backend: str | None = None, **kwargs: Any):
    """`AutoProcessor.from_pretrained(path)` with the image backend `image_backend` ("pil", "torchvision" or None:
    transformers' choice); `kwargs` go to `from_pretrained`.

    Raises:
        ValueError: if the processor cannot be loaded, or the backend is unknown, not installed, or not one the
            image processor has (transformers would fall back to the other one with a warning).
    """
    from transformers import AutoProcessor

    backend = check_image_backend(image_backend)
    try:
        processor = AutoProcessor.from_pretrained(
            path, trust_remote_code=False, **({"backend": backend} if backend else {}), **kwargs
        )
    except (OSError, ValueError) as error:  # a missing file, an unrecognized processor class, custom code
        raise _load_error("the processor of", path, error) from error
    got = image_backend_of(processor)
    if backend is not None and got is not None and got != backend:
        name = type(processor.image_processor).__name__
        raise ValueError(f"{path}: the image processor has no {backend!r} backend (transformers gave {name}, {got!r})")
    return processor


def _one_line(error: Exception) -> str:
    # transformers' loading errors span lines; the first 300 characters on one line name the problem
    return " ".join(str(error).split())[:300]


def _load_error(what: str, path: str | Path, error: Exception) -> ValueError:
    # transformers' loading error as one line naming `path`; its refusal of custom code (we pass
    # trust_remote_code=False, so it never prompts) says that vcontrast does not run it.
    if "trust_remote_code" in str(error):
        return ValueError(
            f"custom-code models (auto_map) are not supported: {what} {str(path)!r} needs code from its folder or "
            "repository, and vcontrast only loads transformers' own model classes"
        )
    return ValueError(f"cannot load {what} {str(path)!r}: {_one_line(error)}")


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
        ValueError: if the folder does not exist, has no readable config.json (or the hub name cannot be reached)
            or holds no image-text-to-text model config, or if the model needs custom code (auto_map).

    Examples:

    ```python
    >>> model_support("checkpoints/llava-1.5-7b-hf")
    ModelSupport(model_class='LlavaForConditionalGeneration', model_type='llava', adapter='LlavaAdapter', tested=True)
    ```
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    text = str(path)
    local = Path(text).expanduser()
    if not local.is_dir():
        check_model_source(text)  # a file, a missing folder or an unreachable hub name: a ValueError naming it
    elif not (local / "config.json").is_file():
        raise ValueError(f"model folder {text!r} has no config.json; pass a folder written by save_pretrained")
    try:
        config = AutoConfig.from_pretrained(str(local) if local.is_dir() else text, trust_remote_code=False)
    except (OSError, ValueError) as error:  # a broken config.json, a name the hub does not have, custom code
        raise _load_error("the config of", text, error) from error
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


def check_device(device: str | torch.device | None) -> torch.device | None:
    """`device` as a `torch.device` this machine has (None stays None); raises ValueError naming it otherwise.

    Examples:

    ```python
    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("banana")
    Traceback (most recent call last):
    ValueError: device 'banana' is not a torch device; use 'cpu', 'cuda', 'cuda:1' or 'mps', or leave it out (CPU)
    ```
    """
    if device is None:
        return None
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(str(device))
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device {str(device)!r} is not a torch device; use 'cpu', 'cuda', 'cuda:1' or 'mps', or leave it out "
            "(CPU)"
        ) from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: this torch build has no usable CUDA GPU (torch.cuda.is_available() is "
                "False); leave the device out to run on the CPU"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; leave the device out to run on the CPU")
    return parsed


def check_model_source(path: str | Path) -> str:
    """Check a model folder (or hub name) before anything loads; returns the string to pass to `from_pretrained`.

    A folder must hold a readable config.json of a supported family, complete safetensors files and processor files.
    A name that does not exist locally is a hub name only if it looks like one (`name` or `org/name`, whose first
    part is not a local folder); it then has to be in the local cache or the hub has to be reachable.

    Raises:
        ValueError: naming the path and what is wrong with it.
    """
    text = str(path)
    local = Path(text).expanduser()
    if local.is_dir():
        _check_model_folder(local)
        return str(local)
    if local.exists():
        raise ValueError(f"model path {text!r} is a file; pass the folder that holds config.json and the weights")
    if _looks_like_path(text):
        raise ValueError(
            f"model folder {text!r} does not exist (resolved to {str(local.resolve())!r}); check the path"
        )
    if not _hub_cached(text):
        if _hub_offline():
            raise ValueError(
                f"model {text!r} is not a local folder and not in the Hugging Face cache, and the hub is offline "
                "(HF_HUB_OFFLINE); check the path or download it first"
            )
        if not _hub_reachable():
            raise ValueError(
                f"model {text!r} is not a local folder, and the Hugging Face hub cannot be reached to download it; "
                "check the path or the network"
            )
    return text


def check_text_length(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, new_tokens: int = 0
) -> None:
    """Raise ValueError if a sequence, with `new_tokens` generated tokens, is longer than the model's position limit
    (`max_position_embeddings`).

    Longer inputs would run silently with positions the model never learned. Models without the field pass.
    """
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or input_ids.dim() != 2:
        return
    lengths = (
        attention_mask.sum(-1) if attention_mask is not None else torch.full((input_ids.shape[0],), input_ids.shape[1])
    )
    longest = int(lengths.max()) if lengths.numel() else 0
    if longest > limit:
        raise ValueError(
            f"an input has {longest} tokens (image tokens included), more than the model's limit of {limit} "
            "(max_position_embeddings); shorten the text"
        )
    if longest + new_tokens > limit:
        raise ValueError(
            f"an input of {longest} tokens (image tokens included) plus max_new_tokens={new_tokens} is more than the "
            f"model's limit of {limit} (max_position_embeddings); lower max_new_tokens or shorten the text"
        )


@contextmanager
def quiet_progress(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' progress bars (e.g. "Loading weights") inside the block when `quiet`."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def _check_model_folder(folder: Path) -> None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"model folder {str(folder)!r} has no config.json; pass a folder written by save_pretrained")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{str(config_file)!r} is not valid JSON ({error}); re-save or re-download the model"
        ) from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    has_image_token = isinstance(config, dict) and any(k in config for k in ("image_token_id", "image_token_index"))
    if model_type not in supported_model_types() and not has_image_token:
        # A text-only model (no image token): say so before transformers lists its ~100 config classes. Other
        # vision-language models get the generic adapter, which checks them once loaded.
        raise ValueError(
            f"model folder {str(folder)!r} holds a {model_type!r} model without an image token, not a "
            f"vision-language model; vcontrast supports these model types: {', '.join(supported_model_types())}"
        )
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not weights:
        raise ValueError(f"model folder {str(folder)!r} has no weights (*.safetensors); pass a complete model folder")
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file)
    if not any((folder / name).is_file() for name in _PROCESSOR_FILES) or not any(
        (folder / name).is_file() for name in _TOKENIZER_FILES
    ):
        raise ValueError(
            f"model folder {str(folder)!r} has no processor files (processor_config.json or preprocessor_config.json, "
            "and tokenizer files); save the processor there too: processor.save_pretrained(folder)"
        )


def _check_safetensors(file: Path) -> None:
    # The header states where every tensor ends; a file shorter than that was cut off (an interrupted copy).
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > size - 8:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(handle.read(length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ValueError(
            f"weights file {str(file)!r} is damaged or truncated ({error}); re-save or re-download the model"
        ) from error
    if 8 + length + end > size:
        raise ValueError(
            f"weights file {str(file)!r} is truncated ({size} bytes, its header needs {8 + length + end}); re-save or "
            "re-download the model"
        )


def _weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _looks_like_path(text: str) -> bool:
    # Hub names are `name` or `org/name`; anything else, or an `org` that is a local folder, is a path.
    parts = text.replace("\\", "/").split("/")
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or len(parts) > 2
        or "" in parts
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )


def _hub_offline() -> bool:
    return any(
        os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    # One quick TCP connection instead of transformers' minute of retries when there is no network.
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    # `from_pretrained` reads dtype names itself; `Module.to` needs the torch.dtype.
    value = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"`dtype` (={dtype!r}) has to be a torch dtype or its name, such as 'bfloat16'")  # noqa: TRY004 (one error type for bad input)
    return value
