"""CRG inside transformers' `generate`: a `LogitsProcessor` that runs the contrast stream with its own KV cache.

`generate` runs the reference stream (full image) as usual. A forward pre-hook on the model records the keyword
arguments `generate` passes to each reference forward (input ids, attention mask, position ids, token types, ...),
and the processor replays them for the contrast stream with its own cache. On the first step it swaps the
pre-encoded reference image (`mm_encoder_outputs`) for the contrast pixels and runs the full prompt, so the contrast
stream sees the masked image *and* the prompt. Replaying `generate`'s own arguments is what keeps Qwen2-VL's 3-D
M-RoPE position ids (built by `generate`, outside `prepare_inputs_for_generation`) and PaliGemma's token types right:
both streams have the same token layout, so they share them.

Beam search reorders `generate`'s cache between steps; the processor finds the same reordering by matching each new
sequence's prefix against the sequences of the previous step, and reorders its own cache likewise.

The processor returns the guided distribution's log-probabilities, `log_softmax(g)`, so that beam search sums the
same per-token scores as `CRG.score`'s default (renormalised) score; greedy decoding and sampling are unchanged by
the per-step shift.

The hook records only the forwards of `generate` calls that the processor takes part in: the processor learns at the
start of each `generate` call of its model whether it is in that call's list (`run_logits_processor_first`), and
every contrast forward of any CRG processor is skipped.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from typing import Any

import torch
from transformers import LogitsProcessor
from typing_extensions import Self

from vcontrast._compat import (
    CACHE_NAMES,
    STATIC_CACHE_IMPLEMENTATIONS,
    cache_from_kwargs,
    cache_from_output,
    cache_kwargs,
    is_static_cache,
    run_logits_processor_first,
)
from vcontrast.crg.guidance import check_alpha, check_beta, guided_logprobs
from vcontrast.models import get_adapter

logger = logging.getLogger(__name__)

# Arguments of the reference forward that never go to the contrast forward: the reference cache (under either of its
# names, see `vcontrast._compat`) and the pre-encoded reference image features.
_REFERENCE_ONLY = (*CACHE_NAMES, "mm_encoder_outputs")


class _ContrastForwards(threading.local):
    # How many contrast forwards (of any CRGLogitsProcessor) are running in this thread: the hooks of every processor
    # skip them, so that two processors in one generate call never record each other's contrast stream.
    depth = 0


_CONTRAST = _ContrastForwards()


def check_generation_config(config: Any) -> None:
    """Raise ValueError naming the option if `config` (a `GenerationConfig`) asks for something CRG generation cannot
    follow: a static (preallocated) cache or chunked prefill. The contrast stream keeps its own dynamic cache and
    prefills the whole prompt at once, in `CRGLogitsProcessor` and in the batched decoder alike."""
    implementation = getattr(config, "cache_implementation", None)
    if implementation in STATIC_CACHE_IMPLEMENTATIONS:
        raise ValueError(
            f"`cache_implementation` (={implementation!r}) is not supported by CRG generation: the contrast stream "
            "keeps its own dynamic cache; leave `cache_implementation` unset or use 'dynamic'"
        )
    chunk = getattr(config, "prefill_chunk_size", None)
    if chunk is not None:
        raise ValueError(
            f"`prefill_chunk_size` (={chunk!r}) is not supported by CRG generation: the contrast stream prefills the "
            "whole prompt at once; leave it unset"
        )


def _capture(ref: weakref.ref, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    # The hook holds the processor weakly, so that dropping the processor removes the hook (see `weakref.finalize`).
    # It records only forwards of generate calls the processor takes part in, and never a contrast forward.
    processor = ref()
    if processor is None or not processor._active or _CONTRAST.depth:
        return
    cache = cache_from_kwargs(kwargs)
    prefill = cache is None or cache.get_seq_length() == 0
    processor._captured = (dict(kwargs), prefill, bool(args))
    return


def _release(handle: Any, restore: Any) -> None:
    # Undo what the processor did to its model: the forward hook, and its place at the head of generate's list.
    handle.remove()
    restore()


def _unexpand(key: str, value: Any, rows: int, repeats: int) -> Any:
    # generate repeats each prompt `repeats` times (beams, return sequences); the contrast prefill runs each once.
    if repeats == 1 or not isinstance(value, torch.Tensor):
        return value
    if key == "position_ids" and value.dim() == 3:  # (k, B, T) multimodal RoPE: batch on dim 1
        return value[:, ::repeats]
    if value.dim() >= 1 and value.shape[0] == rows:
        return value[::repeats]
    return value


def beam_origin(previous: torch.Tensor, prefix: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """For each row of `prefix` (R, L), the row of `previous` (R, L) holding the same tokens within its group of
    `group_size` rows (one prompt's beams); None when no row moved. Rows with equal prefixes have equal caches, so
    any match is right."""
    if torch.equal(previous, prefix):
        return None
    rows = previous.shape[0]
    match = (prefix[:, None, :] == previous[None, :, :]).all(-1)  # (R, R)
    group = torch.arange(rows, device=previous.device) // group_size
    match &= group[:, None] == group[None, :]
    if not bool(match.any(1).all()):
        raise RuntimeError(
            "CRGLogitsProcessor could not tell which earlier sequence each new one continues; this decoding mode "
            "changes sequences in a way it does not support (greedy, sampling and beam search are supported)"
        )
    return match.to(torch.int8).argmax(1)


class CRGLogitsProcessor(LogitsProcessor):
    r"""
    Contrastive Region Guidance (arXiv 2403.02325) as a logits processor: it runs the contrast stream (the same
    prompt with the key regions of the image blacked out) next to `generate`'s reference stream, with its own KV
    cache, and returns the guided distribution's log-probabilities `log_softmax(g)`, with
    `g = (1 + alpha) * log_softmax(reference) - alpha * log_softmax(contrast)`. Renormalising changes no greedy or
    sampled token (it shifts each step's scores by a constant); it makes beam search sum true log-probabilities, the
    same per-token scores as `CRG.score`'s default, so `sequences_scores` stay <= 0 and length penalty and early
    stopping compare like with like.

    In every `generate` call whose `logits_processor` holds it, it runs before every processor and warper `generate`
    builds from its generation config (repetition penalty, suppressed tokens, temperature, top-k, ...), so that those
    act on the guided scores, as in CRG's batched decoder (`generate` would otherwise put a processor passed in
    `logits_processor` after its own ones). `generate` calls that do not pass it are left alone, even while it is
    alive: their list is unchanged and its hook ignores their forwards.

    It works with greedy decoding, sampling and beam search (its cache follows the beams), for padded batches
    (left padding, as `generate` wants), with `generate`'s default dynamic cache: a static cache
    (`cache_implementation="static"`, or a `StaticCache` passed in) and chunked prefill (`prefill_chunk_size`) raise
    `ValueError`. Build it, pass it to `generate` of the same model, and let it go (or use it
    as a context manager): the forward hook it puts on the model is removed when the processor is closed or garbage
    collected. One processor serves any number of `generate` calls with the same contrast inputs.

    Args:
        model (`PreTrainedModel`):
            The VLM whose `generate` will be called (PEFT/DDP wrappers are unwrapped).
        contrast_inputs (`dict`):
            The processor's batch for the contrast image: the *same* `input_ids` and `attention_mask` as the
            reference batch passed to `generate`, and the pixel inputs of the contrast image
            (`CRG.build_inputs` returns both batches).
        alpha (`float`, *optional*, defaults to 1.0):
            Guidance strength, >= 0. At 0 the scores pass through unchanged and no contrast forward runs.
        plausibility_beta (`float`, *optional*):
            VCD's plausibility cutoff in (0, 1]: tokens with `lp_ref < log(beta) + max lp_ref` get `-inf`. Off by
            default.

    Examples:

    ```python
    >>> from transformers import LogitsProcessorList
    >>> reference, contrast = CRG(model, processor).build_inputs(image, "What is in the box?", [(0, 0, 8, 8)])
    >>> with CRGLogitsProcessor(model, contrast, alpha=1.0) as crg:
    ...     out = model.generate(**reference, logits_processor=LogitsProcessorList([crg]), max_new_tokens=16)
    ```
    """

    def __init__(
        self,
        model: torch.nn.Module,
        contrast_inputs: dict,
        alpha: float = 1.0,
        plausibility_beta: float | None = None,
    ):
        self.alpha = check_alpha(alpha)
        self.plausibility_beta = check_beta(plausibility_beta)
        self.adapter = get_adapter(model)
        self.model = self.adapter.model
        inputs = {key: value for key, value in dict(contrast_inputs).items() if key != "labels"}
        self.adapter.check_inputs(inputs)
        if inputs.get(self.adapter.pixel_keys[0]) is None:
            raise ValueError(
                f"`contrast_inputs` has no `{self.adapter.pixel_keys[0]}`: the contrast stream needs its image"
            )
        self.contrast_inputs = inputs
        self._in_contrast = False
        self._active = False  # whether the current generate call of the model passed this processor
        self._captured: tuple[dict, bool, bool] | None = None
        self._cache = None
        self._previous: torch.Tensor | None = None
        self._group_size = 1
        hook = functools.partial(_capture, weakref.ref(self))
        self._handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        restore = run_logits_processor_first(self.model, self, CRGLogitsProcessor._on_generate)
        self._finalizer = weakref.finalize(self, _release, self._handle, restore)

    def close(self) -> None:
        """Remove the forward hook from the model and free the contrast cache (idempotent)."""
        self._finalizer()
        self._active = False
        self._cache = self._previous = self._captured = None

    def _on_generate(self, generation_config: Any, included: bool) -> None:
        # Called when a generate call of the model builds its processor list, before its first forward: a fresh
        # start for this processor if the call passed it, else nothing to record until a call does.
        self._cache = self._previous = self._captured = None
        self._active = included and self._finalizer.alive
        if self._active and self.alpha != 0:
            check_generation_config(generation_config)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        captured, self._captured = self._captured, None
        if self.alpha == 0:
            return scores
        if not self._finalizer.alive:
            raise RuntimeError("this CRGLogitsProcessor is closed; build a new one")
        if captured is None:
            raise RuntimeError(
                "CRGLogitsProcessor saw no forward of its model: pass it to `generate` of the model it was built with"
            )
        kwargs, prefill, positional = captured
        if prefill and is_static_cache(cache_from_kwargs(kwargs)):
            raise ValueError(
                "CRGLogitsProcessor does not support a static cache (`cache_implementation='static'` or a "
                "`StaticCache` passed to generate): its contrast stream keeps a dynamic cache"
            )
        if positional:
            raise ValueError(
                "CRGLogitsProcessor needs the forward's inputs as keyword arguments, as `generate` passes"
            )
        if kwargs.get("use_cache") is False or (not prefill and cache_from_kwargs(kwargs) is None):
            raise ValueError("CRG generation needs `use_cache=True`: the contrast stream keeps its own KV cache")
        contrast = self._prefill(kwargs, input_ids) if prefill else self._step(kwargs, input_ids)
        self._previous = input_ids
        return guided_logprobs(scores, contrast.to(scores.device), self.alpha, self.plausibility_beta, normalize=True)

    def _forward(self, kwargs: dict) -> Any:
        self._in_contrast = True
        _CONTRAST.depth += 1
        try:
            with torch.no_grad():
                return self.model(**kwargs)
        finally:
            _CONTRAST.depth -= 1
            self._in_contrast = False

    def _prefill(self, kwargs: dict, input_ids: torch.Tensor) -> torch.Tensor:
        """First step: the full prompt with the contrast pixels, once per prompt; returns (R, V) last logits."""
        contrast_ids = self.contrast_inputs["input_ids"]
        rows, batch = input_ids.shape[0], contrast_ids.shape[0]
        if rows % batch:
            raise ValueError(
                f"generate runs {rows} sequences but `contrast_inputs` has {batch}: pass the reference batch that "
                "matches the contrast batch"
            )
        repeats = rows // batch
        prompt_ids = kwargs["input_ids"]
        if prompt_ids.shape != (rows, contrast_ids.shape[1]) or not torch.equal(
            prompt_ids[::repeats].cpu(), contrast_ids.cpu()
        ):
            raise ValueError(
                "the contrast `input_ids` differ from the reference prompt passed to `generate`: both streams need "
                "the same text and the same padding (build them together, e.g. with `CRG.build_inputs`)"
            )
        device = prompt_ids.device
        call = {
            key: _unexpand(key, value, rows, repeats)
            for key, value in kwargs.items()
            if key not in _REFERENCE_ONLY and key not in self.adapter.pixel_keys
        }
        for key in self.adapter.pixel_keys:
            value = self.contrast_inputs.get(key)
            if value is not None:
                call[key] = value.to(device) if isinstance(value, torch.Tensor) else value
        # The contrast's own mask (image tokens hidden for "no image"); generate leaves an all-ones mask out.
        call["attention_mask"] = self.contrast_inputs["attention_mask"].to(device)
        call["use_cache"] = True
        call.update(cache_kwargs(None))  # the model builds a fresh cache of its own kind
        out = self._forward(call)
        self._cache = cache_from_output(out)
        self._group_size = repeats
        logits = out.logits[:, -1]  # (B, V)
        if repeats > 1:
            self._cache.batch_repeat_interleave(repeats)
            logits = logits.repeat_interleave(repeats, dim=0)
        return logits

    def _step(self, kwargs: dict, input_ids: torch.Tensor) -> torch.Tensor:
        """One decoding step: follow the beams, then feed the new token with `generate`'s own arguments."""
        previous = self._previous
        if self._cache is None or previous is None:
            raise RuntimeError("CRGLogitsProcessor missed the first step of this generation")
        if input_ids.shape[0] != previous.shape[0] or input_ids.shape[1] != previous.shape[1] + 1:
            raise ValueError(
                f"CRGLogitsProcessor supports greedy, sampling and beam search (one new token per sequence and step); "
                f"the sequences went from shape {tuple(previous.shape)} to {tuple(input_ids.shape)}"
            )
        origin = beam_origin(previous, input_ids[:, :-1], self._group_size)
        if origin is not None:
            self._cache.reorder_cache(origin)
        call = {
            key: value
            for key, value in kwargs.items()
            if key not in _REFERENCE_ONLY and key not in self.adapter.pixel_keys
        }
        prompt = self.contrast_inputs["attention_mask"].to(input_ids.device)
        mask = call.get("attention_mask")
        if mask is None and not bool(prompt.all()):  # generate left out an all-ones mask; the contrast needs its own
            mask = prompt.new_ones(input_ids.shape)
        if mask is not None and mask.dim() == 2:  # the prompt columns from the contrast's own mask
            mask = mask.clone()
            mask[:, : prompt.shape[1]] = prompt.repeat_interleave(self._group_size, dim=0)
            call["attention_mask"] = mask
        call.update(cache_kwargs(self._cache))
        out = self._forward(call)
        return out.logits[:, -1]
