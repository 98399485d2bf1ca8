"""What identifies a loaded model's computation, for files and runs that must not be resumed with another model.

One fingerprint serves CAL's precomputed gains (`vcontrast.cal.precompute.provenance`) and the eval runner's resume
check for a model passed in memory (`vcontrast.bench.fingerprint.model_identity`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vcontrast.models import unwrap_model

logger = logging.getLogger(__name__)

_SAMPLES_PER_TENSOR = 64  # values read from each parameter for the weights fingerprint


def digest(value: Any) -> str:
    """A short, stable hash of a JSON-serialisable value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Config entries that say how a model is run or where it came from, not what it computes.
_RUNTIME_CONFIG_KEYS = (
    "transformers_version",
    "dtype",
    "torch_dtype",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "pad_token_id",
    # The class that saved the config: `save_pretrained` fills it in on a model built in memory, so the same model
    # hashed differently once saved (a run could not resume); `model_class` names the class.
    "architectures",
)


def _config_identity(value: Any, ignored: tuple[str, ...] = _RUNTIME_CONFIG_KEYS) -> Any:
    # The architecture, not where it was loaded from: drop `_name_or_path`, `transformers_version` and the like.
    if isinstance(value, dict):
        kept = {k: v for k, v in value.items() if not str(k).startswith("_") and k not in ignored}
        return {k: _config_identity(v, ignored) for k, v in kept.items()}
    return value


@torch.no_grad()
def _weights_fingerprint(model: nn.Module) -> str:
    # Every parameter's name, shape, dtype and 64 evenly spaced values (exact bytes, so the same on any device and
    # cheap for a 7B model); LoRA parameters of a PEFT model count too.
    parts = []
    for name, param in sorted(unwrap_model(model).named_parameters()):
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].float().cpu()
        parts.append([name, list(param.shape), str(param.dtype), hashlib.sha256(sample.numpy().tobytes()).hexdigest()])
    return digest(parts)


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """`model_class`, `model_config` (hash of the config without paths and versions) and `model_weights` (every
    parameter's name, shape, dtype and 64 sampled values) of a model; PEFT/DDP wrappers are looked through."""
    inner = unwrap_model(model)
    return {
        "model_class": type(inner).__name__,
        "model_config": _config_digest(inner),
        "model_weights": _weights_fingerprint(inner),
    }


def _config_digest(inner: nn.Module) -> str:
    return digest(_config_identity(inner.config.to_dict()))


def _legacy_config_digests(inner: nn.Module) -> set[str]:
    # `model_config` as vcontrast wrote it until 2026-11-28, when the hash still covered the top-level `architectures`:
    # for each value it can have had then (unset in memory, the class name once saved or loaded, or today's).
    config = inner.config.to_dict()
    ignored = tuple(k for k in _RUNTIME_CONFIG_KEYS if k != "architectures")
    return {
        digest(_config_identity({**config, "architectures": architectures}, ignored))
        for architectures in (config.get("architectures"), None, [type(inner).__name__])
    }


def backfill_model_config(record: Mapping, model: nn.Module | None, path: Path, taken_as: str) -> dict:
    """`record` (a fingerprint read from `path`) with today's `model_config` of `model` when its own is the hash an
    older vcontrast wrote for the same config (it also covered `architectures`), so that the file still resumes; a
    warning says so, `taken_as` (e.g. "resuming it as a run with") naming what the record is taken for."""
    if model is None or "model_config" not in record:
        return dict(record)
    inner = unwrap_model(model)
    current = _config_digest(inner)
    if record["model_config"] == current or record["model_config"] not in _legacy_config_digests(inner):
        return dict(record)
    logger.warning(
        "%s holds the model-config hash of an older vcontrast (it covered `architectures`), which matches this "
        "model's config; %s today's hash",
        path,
        taken_as,
    )
    return {**record, "model_config": current}
