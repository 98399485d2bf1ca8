"""What identifies a loaded model's computation, for files and runs that must not be resumed with another model.

One fingerprint serves CAL's precomputed gains (`vcontrast.cal.precompute.provenance`) and the eval runner's resume
check for a model passed in memory (`vcontrast.bench.fingerprint.model_identity`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from vcontrast.models import unwrap_model

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
)


def _config_identity(value: Any) -> Any:
    # The architecture, not where it was loaded from: drop `_name_or_path`, `transformers_version` and the like.
    if isinstance(value, dict):
        return {
            k: _config_identity(v)
            for k, v in value.items()
            if not str(k).startswith("_") and k not in _RUNTIME_CONFIG_KEYS
        }
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
        "model_config": digest(_config_identity(inner.config.to_dict())),
        "model_weights": _weights_fingerprint(inner),
    }
