"""CRG generation with both streams in one forward: a `custom_generate` decoding loop for transformers' `generate`.

The reference rows (full image) and the contrast rows (regions blacked out) share the token layout, so they run as
one batch of 2B rows through a single cache: one forward per step instead of two. `generate` still provides the
generation config, the logits processors and warpers (temperature, top-k, top-p, ...) and the stopping criteria; this
loop does greedy decoding and sampling. Beam search goes through `CRGLogitsProcessor` instead.

On both paths `generate`'s own processors and warpers (repetition penalty, suppressed tokens, temperature, top-k,
...) act on the guided scores: here they get them from this loop, and a `CRGLogitsProcessor` puts itself at the
head of `generate`'s list. So the two paths give identical tokens for the same settings (and seed).
"""

from __future__ import annotations

import functools

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from vcontrast._compat import cache_from_output, cache_kwargs
from vcontrast.crg.guidance import check_alpha, check_beta, guided_logprobs
from vcontrast.models import ModelAdapter, get_adapter


def stack_streams(reference: dict, contrast: dict) -> dict:
    """One batch of the reference rows followed by the contrast rows (tensors concatenated on dim 0).

    Pixel inputs concatenate on dim 0 in every supported family, including Qwen2-VL's flattened patches (whose
    `image_grid_thw` rows follow the same order)."""
    keys = [key for key in reference if key != "labels"]
    out = {}
    for key in keys:
        a, b = reference[key], contrast.get(key)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            out[key] = torch.cat([a, b.to(a.device)], dim=0)
        elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            raise ValueError(f"`{key}` is in one stream's inputs but not the other's")  # noqa: TRY004
        else:
            out[key] = a
    return out


def batch_rows(position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of position ids shaped (B, T) or (k, B, T)."""
    return position_ids[:, index] if position_ids.dim() == 3 else position_ids[index]


def cat_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate position ids shaped (B, T) or (k, B, T) along the batch."""
    return torch.cat([a, b], dim=1 if a.dim() == 3 else 0)


def model_inputs(adapter: ModelAdapter, inputs: dict) -> dict:
    """The token-aligned and pixel inputs the model's forward takes."""
    return {key: inputs[key] for key in adapter.token_keys + adapter.pixel_keys if inputs.get(key) is not None}


def two_stream_generate(
    model: torch.nn.Module,
    reference: dict,
    contrast: dict,
    alpha: float = 1.0,
    plausibility_beta: float | None = None,
    **generate_kwargs,
) -> torch.LongTensor | GenerateDecoderOnlyOutput:
    """CRG greedy decoding or sampling with the reference and contrast streams batched in one forward per step.

    Args:
        model (`PreTrainedModel`): a supported VLM.
        reference (`dict`): the processor's batch with the image (left-padded when B > 1).
        contrast (`dict`): the same `input_ids`/`attention_mask` with the contrast image's pixel inputs.
        alpha (`float`, *optional*, defaults to 1.0): guidance strength, >= 0.
        plausibility_beta (`float`, *optional*): VCD's plausibility cutoff in (0, 1]; off by default.
        **generate_kwargs: passed to `model.generate` (`max_new_tokens`, `do_sample`, `temperature`, ...);
            `num_beams > 1` is refused (use `CRGLogitsProcessor`).

    Returns:
        What `generate` returns: the sequences (B * num_return_sequences, T + new), prompt included, or a
        `GenerateDecoderOnlyOutput` with `sequences` (and `scores`, when asked: the guided distribution's
        log-probabilities `log_softmax(g)` after generate's processors and warpers).

    Examples:

    ```python
    >>> reference, contrast = CRG(model, processor).build_inputs(image, "What is in the box?", [(0, 0, 8, 8)])
    >>> ids = two_stream_generate(model, reference, contrast, alpha=1.0, max_new_tokens=16)
    ```
    """
    alpha, plausibility_beta = check_alpha(alpha), check_beta(plausibility_beta)
    adapter = get_adapter(model)
    adapter.check_inputs(reference)
    adapter.check_inputs(contrast)
    ids, contrast_ids = reference["input_ids"], contrast["input_ids"]
    if ids.shape != contrast_ids.shape or not torch.equal(ids, contrast_ids.to(ids.device)):
        raise ValueError("reference and contrast `input_ids` differ: both streams need the same text and padding")
    for key in ("custom_generate", "assistant_model", "position_ids"):
        if generate_kwargs.get(key) is not None:
            raise ValueError(f"two_stream_generate does not take `{key}`")
    positions = adapter.position_ids(reference)  # (B, T) or (3, B, T), from the attention mask
    decode = functools.partial(
        _decode,
        adapter=adapter,
        stacked=model_inputs(adapter, stack_streams(reference, contrast)),
        positions=cat_rows(positions, positions),
        alpha=alpha,
        plausibility_beta=plausibility_beta,
    )
    # Only the text goes through generate's own preparation (no pixels: the image is encoded once, in our prefill).
    # Explicit position ids keep Qwen2-VL's generate from caching text-only `rope_deltas` on the model.
    return adapter.model.generate(
        input_ids=ids,
        attention_mask=reference["attention_mask"],
        position_ids=positions,
        custom_generate=decode,
        **generate_kwargs,
    )


def _decode(
    model,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config,
    synced_gpus: bool = False,
    streamer=None,
    *,
    adapter: ModelAdapter,
    stacked: dict,
    positions: torch.Tensor,
    alpha: float,
    plausibility_beta: float | None,
    **model_kwargs,
):
    # The decoding loop `generate` calls with its prepared processors and stopping criteria (`custom_generate`).
    if generation_config.num_beams is not None and generation_config.num_beams > 1:
        raise ValueError(
            f"two_stream_generate does greedy decoding and sampling; got `num_beams` (={generation_config.num_beams}):"
            " use CRGLogitsProcessor for beam search"
        )
    rows, batch = input_ids.shape[0], stacked["input_ids"].shape[0] // 2
    repeats = rows // batch  # num_return_sequences
    mask = stacked["attention_mask"]  # (2B, T)
    with torch.no_grad():
        out = model(**stacked, position_ids=positions, use_cache=True, logits_to_keep=1, return_dict=True)
    cache, logits = cache_from_output(out), out.logits[:, -1]  # (2B, V)
    positions = positions[..., -1:]  # (2B, 1) or (3, 2B, 1): the last prompt position of each row
    if repeats > 1:
        one = torch.arange(batch, device=mask.device).repeat_interleave(repeats)
        index = torch.cat([one, one + batch])  # (2R,)
        cache.batch_select_indices(index)
        logits, mask, positions = logits[index], mask[index], batch_rows(positions, index)
    keep_mask = not bool(mask.all())  # like generate: no mask at all when nothing is padded
    extra = {key: value for key, value in adapter.generated_token_types.items() if key in stacked}

    pad_token_id = generation_config._pad_token_tensor
    has_eos = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    unfinished = torch.ones(rows, dtype=torch.long, device=input_ids.device)
    keep_scores = generation_config.return_dict_in_generate and generation_config.output_scores
    all_scores = () if keep_scores else None
    while True:
        # The guided distribution's log-probs, as CRGLogitsProcessor returns them (same tokens as the raw g).
        guided = guided_logprobs(logits[:rows], logits[rows:], alpha, plausibility_beta, normalize=True)
        guided = guided.to(input_ids.device)
        scores = logits_processor(input_ids, guided)
        if keep_scores:
            all_scores += (scores,)
        if generation_config.do_sample:
            next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        if has_eos:
            next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(next_tokens.cpu())
        unfinished = unfinished & ~stopping_criteria(input_ids, all_scores)
        if unfinished.max() == 0:
            break
        step_ids = torch.cat([next_tokens, next_tokens])[:, None].to(mask.device)  # (2R, 1): same token, both streams
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        positions = positions + 1
        step = {key: torch.full_like(step_ids, value) for key, value in extra.items()}
        with torch.no_grad():
            out = model(
                input_ids=step_ids,
                attention_mask=mask if keep_mask else None,
                position_ids=positions,
                **cache_kwargs(cache),
                use_cache=True,
                logits_to_keep=1,
                return_dict=True,
                **step,
            )
        logits = out.logits[:, -1]
    if streamer is not None:
        streamer.end()
    if generation_config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=input_ids, scores=all_scores)
    return input_ids
