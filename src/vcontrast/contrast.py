"""The primitive CRG and CAL share: gold-token logits of a padded batch under a visual condition.

Three conditions act on an already processed batch:

- reference (`condition=None`): the batch as given, image included;
- `NoImage()`: image tokens dropped from the sequence, vision tower skipped, every remaining token keeping the
  position id it has with the image (the cheap exact form of the CAL paper's attention-mask ablation);
- `"attention_mask"`: the paper's own form: the full sequence, image tokens masked out of the attention mask,
  position ids kept (for exact reproduction and as the reference the cheap form is tested against).

Image-space conditions (`Blackout`, `PatchMask`, ...) change pixels, not tokens: apply them to the images, run the
processor, and pass the contrast batch here as the reference (`CRG.build_inputs` builds such a batch for CRG,
`vcontrast.cal.add_contrast_pixels` and `ContrastCollator` for CAL).

Scores come from the model's own forward (through FSDP's hooks) and its own head module (PEFT LoRA on `lm_head`, a
quantised head): a pre-hook on the head takes the final hidden states and scores only the gold tokens' rows, through
the head in chunks of positions, so no vocabulary-sized tensor of the whole batch is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vcontrast.models import ModelAdapter, get_adapter

IGNORE_INDEX = -100
ATTENTION_MASK = "attention_mask"
CHUNK_SIZE = 256  # rows of (rows, V) head outputs alive at once when scoring gold tokens


@dataclass
class TokenScores:
    """Per-token scores aligned with `labels` (B, T): entry [b, p] scores `labels[b, p]` as predicted from p - 1.

    Args:
        logits (`torch.Tensor`): (B, T) float32 raw logit of the gold token; 0 where the label is ignored.
        logprobs (`torch.Tensor | None`): (B, T) float32 log-probability of the gold token, if asked for.
        mask (`torch.Tensor`): (B, T) bool, True where a label is scored.
    """

    logits: torch.Tensor
    logprobs: torch.Tensor | None
    mask: torch.Tensor


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the position that predicts them: out[b, p] = labels[b, p + 1] (the one convention)."""
    return nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def check_labels(labels: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """`labels` if it is an integer tensor shaped like `input_ids`; raises TypeError/ValueError naming it otherwise.

    Float labels (e.g. from a collator that stacked them with `torch.tensor(..., dtype=float)`) or a Python list would
    otherwise fail deep inside indexing, or compare wrongly against the ignore index.

    Examples:

    ```python
    >>> check_labels(torch.tensor([[1, -100]]), torch.tensor([[5, 6]])).dtype
    torch.int64
    ```
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"`labels` has to be a torch.Tensor of token ids shaped like input_ids, got {type(labels).__name__}; "
            "use torch.tensor(labels)"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"`labels` has to hold integer token ids (-100 = ignored), got dtype {labels.dtype}; use labels.long()"
        )
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
    return labels


def check_token_ids(tokens: torch.Tensor, vocab_size: int) -> None:
    """Raise a ValueError naming the first label token id outside `[0, vocab_size)`.

    Indexing the output head with such an id either crashes deep in torch (a device-side assert on CUDA) or, for a
    negative id such as an ignore index of -1 instead of -100, silently scores the last rows of the vocabulary.
    """
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bool(bad.any()):
        raise ValueError(
            f"label token id {int(tokens[bad][0])} is outside the vocabulary [0, {vocab_size}); ignored labels have "
            f"to be {IGNORE_INDEX}"
        )


def refuse_zero3(module: nn.Module) -> None:
    """Raise a ValueError if `module`'s parameters are partitioned by DeepSpeed ZeRO-3.

    ZeRO-3 gathers a module's parameters in its forward hooks and releases them after each call, so the head cannot
    be called again on the gold rows inside its own forward, as vcontrast does under FSDP. Rather than run wrong,
    vcontrast refuses.
    """
    if any(hasattr(param, "ds_id") for param in module.parameters()):
        raise ValueError(
            "DeepSpeed ZeRO-3 partitions the output head's parameters, which vcontrast's gold-token scoring cannot "
            "gather; train CAL with FSDP (accelerate's FSDP plugin), DDP, or DeepSpeed ZeRO-1/2"
        )


def _forward_inputs(adapter: ModelAdapter, inputs: dict, condition=None) -> tuple[dict, torch.Tensor]:
    """Forward kwargs of the model under `condition`, and where each input position lands in its output.

    Returns:
        `(kwargs, index)`: index (B, T) long: the output row holding position p or, where p was dropped (an image
        token under `NoImage`), the row of the last kept position before it (-1 if none).
    """
    adapter.check_inputs(inputs)
    input_ids = inputs["input_ids"]
    batch, length = input_ids.shape
    positions = adapter.position_ids(inputs)
    rows = torch.arange(length, device=input_ids.device).expand(batch, -1)

    if condition is None or condition == ATTENTION_MASK:
        kwargs = {k: v for k, v in inputs.items() if k in adapter.token_keys + adapter.pixel_keys}
        if condition == ATTENTION_MASK:
            image = adapter.image_token_mask(input_ids)
            kwargs["attention_mask"] = inputs["attention_mask"].masked_fill(image, 0)
        return {**kwargs, "position_ids": positions}, rows

    if not getattr(condition, "drops_image", False):
        raise ValueError(
            f"condition {condition!r} changes pixels, not tokens: apply it to the images and process them "
            "(e.g. vcontrast.cal.add_contrast_pixels), then pass that batch with condition=None"
        )
    keep = inputs["attention_mask"].bool() & ~adapter.image_token_mask(input_ids)  # (B, T)
    kept = keep.sum(1)
    # Stable sort puts each row's kept tokens first, in their original order; the rest become right padding.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, : max(int(kept.max()), 1)]
    index = keep.long().cumsum(1) - 1  # (B, T): row in the compacted sequence (last kept one for dropped tokens)
    return adapter.text_only_inputs(inputs, order, keep), index


def _gold_through_forward(
    adapter: ModelAdapter,
    kwargs: dict,
    select: tuple[torch.Tensor, torch.Tensor],
    tokens: torch.Tensor,
    *,
    logprobs: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Run the model's own forward (through FSDP's hooks, which gather sharded parameters) and score the gold tokens
    # inside it: a pre-hook on the head module takes its input hidden states (B, L, H), scores the selected rows
    # through the head in chunks, and hands the head an empty slice instead, so no (B, L, V) tensor is ever built.
    head, softcap = adapter.output_head()
    refuse_zero3(head)
    state: dict = {"busy": False}

    def score_in_head(module, args, head_kwargs):
        if state["busy"]:  # our own chunked calls of the head
            return None
        hidden = args[0] if args else head_kwargs["input"]
        state["busy"] = True
        try:
            state["scores"] = _score_rows(head, softcap, hidden[select], tokens, logprobs, chunk_size)
        finally:
            state["busy"] = False
        empty = hidden[:, :0]
        return ((empty, *args[1:]), head_kwargs) if args else (args, {**head_kwargs, "input": empty})

    handle = head.register_forward_pre_hook(score_in_head, with_kwargs=True)
    try:
        adapter.forward_model(**kwargs, use_cache=False)
    finally:
        handle.remove()
    if "scores" not in state:
        raise ValueError(
            f"{type(adapter.model).__name__}'s forward never called its output head "
            f"({type(head).__name__}, from get_output_embeddings()): vcontrast cannot score tokens with it"
        )
    return state["scores"]


def gold_token_logits(
    model: nn.Module | ModelAdapter,
    inputs: dict,
    labels: torch.Tensor,
    condition=None,
    *,
    logprobs: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> TokenScores:
    """Gold-token logits (and optionally log-probs) of `labels` under a visual condition, for a padded batch.

    Args:
        model (`PreTrainedModel` or `ModelAdapter`): a supported VLM.
        inputs (`dict`): the processor's batch (`input_ids`, `attention_mask`, pixel inputs, ...).
        labels (`torch.Tensor`): (B, T) aligned with `input_ids`, -100 where ignored; the label at p is predicted
            from position p - 1 (the usual causal-LM shift).
        condition (*optional*): None (reference, image included), `NoImage()` or `"attention_mask"`.
        logprobs (`bool`, *optional*, defaults to `False`): also return log-softmax values of the gold tokens.
        chunk_size (`int`, *optional*, defaults to 256): positions per chunk of head outputs (chunk, V).

    Returns:
        `TokenScores` with float32 (B, T) tensors. Gradients flow unless called under `torch.no_grad()`.

    Examples:

    ```python
    >>> scores = gold_token_logits(model, batch, batch["labels"], NoImage())
    >>> delta = gold_token_logits(model, batch, batch["labels"]).logits - scores.logits
    ```
    """
    check_labels(labels, inputs["input_ids"])
    adapter = get_adapter(model)
    kwargs, index = _forward_inputs(adapter, inputs, condition)
    adapter.check_scored_labels(inputs, labels)
    target = shift_labels(labels)  # (B, T): target[b, p] is predicted at position p
    mask = target != IGNORE_INDEX
    b_idx, p_idx = mask.nonzero(as_tuple=True)
    rows = index[b_idx, p_idx]
    if bool((rows < 0).any()):
        raise ValueError("a label is predicted from a position with no text token before it under this condition")
    tokens = target[b_idx, p_idx]
    check_token_ids(tokens, adapter.vocab_size)
    gold = _gold_through_forward(adapter, kwargs, (b_idx, rows), tokens, logprobs=logprobs, chunk_size=chunk_size)

    logit_map = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    label_pos = p_idx + 1  # the label sits one to the right of the position that predicts it
    logit_map = logit_map.index_put((b_idx, label_pos), gold[0])
    logprob_map = None
    if logprobs:
        logprob_map = torch.zeros_like(logit_map).index_put((b_idx, label_pos), gold[1])
    label_mask = labels != IGNORE_INDEX
    label_mask[:, 0] = False  # nothing predicts the first position
    return TokenScores(logits=logit_map, logprobs=logprob_map, mask=label_mask)


def score_tokens(
    model: nn.Module | ModelAdapter,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    *,
    logprobs: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw logits (and log-probs) of `tokens` (N,) from final hidden states (N, H), in float32.

    The hidden states go through the model's head module (PEFT layers and quantisation apply), `chunk_size` rows at
    a time, so no (N, V) tensor of all rows is kept alive (except by autograd, when gradients flow). Gradients flow
    unless called under `torch.no_grad()`. Called outside the model's forward, so an FSDP-sharded head is not
    gathered here; [`gold_token_logits`] scores inside the forward.
    """
    adapter = get_adapter(model)
    check_token_ids(tokens, adapter.vocab_size)
    head, softcap = adapter.output_head()
    return _score_rows(head, softcap, hidden, tokens, logprobs, chunk_size)


def _score_rows(
    head: nn.Module, softcap: float | None, hidden: torch.Tensor, tokens: torch.Tensor, logprobs: bool, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # hidden (N, H), tokens (N,) -> gold (N,), log-probs (N,) or None; float32; (chunk_size, V) logits at a time.
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` (={chunk_size!r}) has to be a positive integer")
    gold, norm = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        logits = _head_forward(head, softcap, hidden[start : start + chunk_size])  # (chunk, V)
        gold.append(logits.gather(-1, tokens[start : start + chunk_size, None]).squeeze(-1))
        if logprobs:
            norm.append(torch.logsumexp(logits, dim=-1))
    empty = hidden.new_zeros(0, dtype=torch.float32)
    gold_all = torch.cat(gold) if gold else empty
    if not logprobs:
        return gold_all, None
    return gold_all, gold_all - (torch.cat(norm) if norm else empty)


def head_logits(model: nn.Module | ModelAdapter, hidden: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary float32 logits (..., V) of final hidden states (..., H), through the head module, with the
    model's final soft-cap."""
    head, softcap = get_adapter(model).output_head()
    return _head_forward(head, softcap, hidden)


def _head_forward(head: nn.Module, softcap: float | None, hidden: torch.Tensor) -> torch.Tensor:
    # The head module's own forward (LoRA, quantisation apply), in the model's dtype as in its forward, then float32.
    logits = head(hidden).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
