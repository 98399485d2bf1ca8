"""The one place that knows how transformers' internals are named in each supported release.

transformers 5.24 renamed the KV-cache argument of every forward (and `generate`'s model kwargs) from
`past_key_values` to `cache`, and the output field likewise; the old names still work until 5.40 but print a
deprecation warning. Every module that passes a cache to a forward or reads one back goes through these helpers,
so a rename costs one edit here, and the suite runs on both the locked and the newest releases (`make test-latest`).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
import transformers
from packaging.version import Version

# Every name a cache has had in a forward's keyword arguments; the first is the one the installed release wants.
_CACHE_RENAMED_IN = Version("5.24.0.dev0")
CACHE_ARG = "cache" if Version(transformers.__version__) >= _CACHE_RENAMED_IN else "past_key_values"
CACHE_NAMES = (CACHE_ARG, *(name for name in ("cache", "past_key_values") if name != CACHE_ARG))


# `cache_implementation` values for which generate preallocates a static cache, whose attention mask and cache
# positions a separately kept dynamic cache cannot follow (transformers' `ALL_STATIC_CACHE_IMPLEMENTATIONS`, spelled
# out: it is not public). "hybrid" is left out: generate replaces it by a dynamic cache.
STATIC_CACHE_IMPLEMENTATIONS = (
    "static",
    "offloaded_static",
    "sliding_window",
    "hybrid_chunked",
    "offloaded_hybrid",
    "offloaded_hybrid_chunked",
)


def is_static_cache(cache: Any) -> bool:
    """Whether `cache` is a preallocated (static) cache, as `StaticCache` is; False for None and dynamic caches."""
    return bool(getattr(cache, "is_compileable", False))


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


def select_cache_rows(cache: Any, rows: Any) -> Any:
    """A new cache holding rows `rows` (a 1-D index tensor, repeats allowed) of `cache`; `cache` is left as it is.

    `Cache.batch_select_indices` edits a cache in place, and every layer of transformers' dynamic caches does it by
    rebinding its tensors (`self.keys = self.keys[indices]`), never by writing into them. So a shallow copy of the
    cache and of its layers, narrowed in place, shares nothing with the original that either side changes later.
    """
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)
    return selected


def cache_nbytes(cache: Any) -> int:
    """Bytes held by the tensors of a cache's layers (keys, values and any other per-layer state)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for value in vars(layer).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def run_logits_processor_first(
    model: Any, processor: Any, on_generate: Callable[[Any, Any, bool], None] | None = None
) -> Callable[[], None]:
    """In every `model.generate` call whose `logits_processor` holds `processor`, run it before every logits
    processor and warper `generate` builds from its generation config (repetition penalty, suppressed tokens,
    temperature, top-k, ...); returns the function that undoes it.

    `generate` puts the processors a caller passes after those it builds itself (`_merge_criteria_processor_list`),
    so a guidance processor passed in the list would see scores that those already changed (a temperature, a
    penalty on the reference stream only). `generate` builds its list in `_get_logits_processor`; this wraps that
    method on the model instance, once per model however many processors are registered. A call whose list does
    not hold `processor` gets its list unchanged; when it holds several registered processors, they go first in the
    caller's order.

    `on_generate(processor, generation_config, included)`, if given, is called at the start of every `generate`
    call of the model (before its first forward), with whether `processor` takes part in it; it may raise to refuse
    the call. The wrapper holds the processor weakly and passes it by once it is gone. The registry lives on the
    wrapper function, not on the model, so that `copy.deepcopy(model)` copies nothing of it.
    """
    wrapper = vars(model).get("_get_logits_processor")
    registry = getattr(wrapper, "_vcontrast_registry", None)
    if registry is None:
        registry = []
        original = model._get_logits_processor

        def first(*args: Any, **kwargs: Any) -> Any:
            built = original(*args, **kwargs)
            config = kwargs["generation_config"] if "generation_config" in kwargs else (args[0] if args else None)
            chosen = []
            for target, callback in registry.copy():  # a finalizer may unregister one meanwhile
                current = target()
                if current is None:
                    continue
                included = any(p is current for p in built)
                if callback is not None:
                    callback(current, config, included)
                if included:
                    chosen.append(current)
            if not chosen:
                return built
            head = [p for p in built if any(p is c for c in chosen)]
            return type(built)([*head, *(p for p in built if not any(p is c for c in chosen))])

        first._vcontrast_registry = registry
        model._get_logits_processor = first
        wrapper = first
    entry = (weakref.ref(processor), on_generate)
    registry.append(entry)

    def restore() -> None:
        registry[:] = [e for e in registry if e is not entry]  # by identity, not by the weakrefs' referents
        if not registry and vars(model).get("_get_logits_processor") is wrapper:
            del model._get_logits_processor

    return restore


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
