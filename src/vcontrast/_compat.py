"""The one place that knows how transformers' internals are named in each supported release.

transformers 5.24 renamed the KV-cache argument of every forward (and `generate`'s model kwargs) from
`past_key_values` to `cache`, and the output field likewise; the old names still work until 5.40 but print a
deprecation warning. Every module that passes a cache to a forward or reads one back goes through these helpers,
so a rename costs one edit here, and the suite runs on both the locked and the newest releases (`make test-latest`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import transformers
from packaging.version import Version

# Every name a cache has had in a forward's keyword arguments; the first is the one the installed release wants.
_CACHE_RENAMED_IN = Version("5.24.0.dev0")
CACHE_ARG = "cache" if Version(transformers.__version__) >= _CACHE_RENAMED_IN else "past_key_values"
CACHE_NAMES = (CACHE_ARG, *(name for name in ("cache", "past_key_values") if name != CACHE_ARG))


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`{name: cache}` under the name the installed transformers wants in a forward call."""
    return {CACHE_ARG: cache}


def cache_from_kwargs(kwargs: Mapping[str, Any]) -> Any:
    """The cache in a forward's keyword arguments (as `generate` passed them), under either name; None if absent."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def without_cache(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a forward's keyword arguments with the cache removed, whatever its name."""
    return {key: value for key, value in kwargs.items() if key not in CACHE_NAMES}


def cache_from_output(output: Mapping[str, Any]) -> Any:
    """The cache a forward returned (`output.cache` from 5.24 on, `output.past_key_values` before), without
    touching the deprecated property that warns."""
    for name in CACHE_NAMES:
        if output.get(name) is not None:
            return output[name]
    return None


def processor_image_token_ids(processor: Any) -> list[int]:
    """The token ids a processor writes into `input_ids` for an image.

    transformers 5.x processors list them in `image_token_ids` (Gemma3's `image_token_id` is its begin-of-image
    marker; the soft tokens the model replaces are in the list); older ones, and processors that do not override it,
    have only `image_token_id`. Empty if the processor names none.
    """
    ids = getattr(processor, "image_token_ids", None)
    if ids is None:
        ids = [getattr(processor, "image_token_id", None)]
    return [int(i) for i in ids if i is not None]
