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

Only the logits of the gold tokens are computed (`hidden @ lm_head.weight[token]`), never a second
vocabulary-sized tensor; log-probabilities need a log-sum-exp over the vocabulary, done in chunks of positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vcontrast.models import ModelAdapter, get_adapter

IGNORE_INDEX = -100
ATTENTION_MASK = "attention_mask"


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


def hidden_states(model: nn.Module | ModelAdapter, inputs: dict, condition=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states of the language model under `condition`, and where each input position landed.

    Returns:
        `(hidden, index)`: hidden (B, L, H); index (B, T) long: the row of `hidden` holding position p or, where p
        was dropped (an image token under `NoImage`), the row of the last kept position before it (-1 if none).
    """
    adapter = get_adapter(model)
    adapter.check_inputs(inputs)
    backbone = adapter.backbone()
    input_ids = inputs["input_ids"]
    batch, length = input_ids.shape
    positions = adapter.position_ids(inputs)
    rows = torch.arange(length, device=input_ids.device).expand(batch, -1)

    if condition is None or condition == ATTENTION_MASK:
        kwargs = {k: v for k, v in inputs.items() if k in adapter.token_keys + adapter.pixel_keys}
        if condition == ATTENTION_MASK:
            image = adapter.image_token_mask(input_ids)
            kwargs["attention_mask"] = inputs["attention_mask"].masked_fill(image, 0)
        out = backbone(**kwargs, position_ids=positions, use_cache=False)
        return out.last_hidden_state, rows

    if not getattr(condition, "drops_image", False):
        raise ValueError(
            f"condition {condition!r} changes pixels, not tokens: apply it to the images and process them "
            "(e.g. vcontrast.cal.add_contrast_pixels), then pass that batch with condition=None"
        )
    keep = inputs["attention_mask"].bool() & ~adapter.image_token_mask(input_ids)  # (B, T)
    kept = keep.sum(1)
    # Stable sort puts each row's kept tokens first, in their original order; the rest become right padding.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, : max(int(kept.max()), 1)]
    text_inputs = adapter.text_only_inputs(inputs, order, keep)
    out = backbone(**text_inputs, use_cache=False)
    index = keep.long().cumsum(1) - 1  # (B, T): row in the compacted sequence (last kept one for dropped tokens)
    return out.last_hidden_state, index


def gold_token_logits(
    model: nn.Module | ModelAdapter,
    inputs: dict,
    labels: torch.Tensor,
    condition=None,
    *,
    logprobs: bool = False,
    chunk_size: int = 1024,
) -> TokenScores:
    """Gold-token logits (and optionally log-probs) of `labels` under a visual condition, for a padded batch.

    Args:
        model (`PreTrainedModel` or `ModelAdapter`): a supported VLM.
        inputs (`dict`): the processor's batch (`input_ids`, `attention_mask`, pixel inputs, ...).
        labels (`torch.Tensor`): (B, T) aligned with `input_ids`, -100 where ignored; the label at p is predicted
            from position p - 1 (the usual causal-LM shift).
        condition (*optional*): None (reference, image included), `NoImage()` or `"attention_mask"`.
        logprobs (`bool`, *optional*, defaults to `False`): also return log-softmax values of the gold tokens.
        chunk_size (`int`, *optional*, defaults to 1024): positions per chunk of the log-sum-exp over the vocabulary.

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
    hidden, index = hidden_states(adapter, inputs, condition)
    target = shift_labels(labels)  # (B, T): target[b, p] is predicted at position p
    mask = target != IGNORE_INDEX
    b_idx, p_idx = mask.nonzero(as_tuple=True)
    rows = index[b_idx, p_idx]
    if bool((rows < 0).any()):
        raise ValueError("a label is predicted from a position with no text token before it under this condition")
    h = hidden[b_idx, rows].float()  # (N, H)
    gold = score_tokens(adapter, h, target[b_idx, p_idx], logprobs=logprobs, chunk_size=chunk_size)

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
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw logits (and log-probs) of `tokens` (N,) from final hidden states (N, H), in float32.

    The gold logit is a dot product with one row of the output embedding; the log-softmax normaliser is a
    log-sum-exp over the vocabulary computed `chunk_size` rows at a time, so no (N, V) tensor is kept alive.
    Gradients flow unless called under `torch.no_grad()`.
    """
    weight, bias, softcap = get_adapter(model).output_head()
    check_token_ids(tokens, weight.shape[0])
    h = hidden.float()
    gold = (h * weight[tokens].float()).sum(-1)
    if bias is not None:
        gold = gold + bias[tokens].float()
    if softcap is not None:
        gold = torch.tanh(gold / softcap) * softcap
    if not logprobs:
        return gold, None
    weight = weight.float()  # once, not once per chunk (a copy for half-precision models)
    lse = [
        torch.logsumexp(_head_logits(h[start : start + chunk_size], weight, bias, softcap), dim=-1)
        for start in range(0, h.shape[0], chunk_size)
    ]
    norm = torch.cat(lse) if lse else gold.new_zeros(0)
    return gold, gold - norm


def head_logits(model: nn.Module | ModelAdapter, hidden: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary float32 logits (..., V) of final hidden states (..., H), with the head's bias and soft-cap."""
    weight, bias, softcap = get_adapter(model).output_head()
    return _head_logits(hidden.float(), weight.float(), bias, softcap)


def _head_logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> torch.Tensor:
    # The output head in float32: h (..., H) float32, weight (V, H) float32 -> (..., V).
    logits = h @ weight.T
    if bias is not None:
        logits = logits + bias.float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
