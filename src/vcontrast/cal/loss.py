"""CAL's token weights and loss (arXiv 2405.17871, DESIGN.md §1).

Two layers, like TRL's `dft_loss` beside `SFTTrainer`:

- pure tensor functions ([`clamp_weights`], [`pool_weights`], [`token_weights`], [`weighted_loss`]) that turn per-token
  logit gains into weights and a loss, testable in closed form;
- [`cal_deltas`], [`cal_weights`] and [`cal_loss`], which run the model: the reference (with-image) pass and the
  contrast pass, on a standard transformers VLM batch.

Conventions: every per-token tensor has the shape of `labels` (B, T) and entry [b, p] belongs to the label at
position p, which is predicted from position p - 1 (the usual causal-LM shift). A label takes part in CAL (its entry
of [`cal_label_mask`] is True) when it is not -100, p >= 1, both p and p - 1 are real tokens (attention mask 1) and
neither is an image placeholder: a label on an image token, or predicted from one, has no meaning without the image
(the official code drops them too). Everything outside the mask is 0.

Cost of the contrast pass for `NoImage()` (the default): one no-grad forward of the language model over the text
tokens only (image tokens dropped, vision tower skipped, original position ids kept), in eval mode (dropout off, LoRA
dropout included), whose head module runs on the label rows only, in chunks (see [`vcontrast.contrast`]), never on
a second (B, T, V) tensor. Samples without image tokens get delta 0 and are left out of it. The with-image gold
logits come for free from the training forward's logits.

Image-space contrast conditions (`PatchMask`, `GaussianBlur`, `DiffusionNoise`) change pixels, which only the data
pipeline has: the batch carries the contrast pixels under `contrast_<key>` (`contrast_pixel_values`, ...), built by
[`ContrastCollator`] or [`add_contrast_pixels`], and the contrast pass is a full no-grad forward with them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vcontrast.cal.config import ATTENTION_MASK, CALConfig
from vcontrast.conditions import VisualCondition, _is_int
from vcontrast.contrast import (
    CHUNK_SIZE,
    IGNORE_INDEX,
    check_labels,
    check_token_ids,
    gold_token_logits,
    score_tokens,
    shift_labels,
)
from vcontrast.models import ModelAdapter, get_adapter

CONTRAST_PREFIX = "contrast_"
WEIGHTS_KEY = "cal_weights"  # precomputed weights (B, T) aligned with labels, e.g. from `precompute_weights`
# Keys a collator may add that the model's forward must not see.
_EXTRA_KEYS = ("labels", WEIGHTS_KEY, "position_ids")
# Keys of a processed batch that describe the text, not the image (everything else is a pixel input).
_TEXT_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids", "position_ids")

__all__ = [
    "CALOutput",
    "ContrastCollator",
    "add_contrast_pixels",
    "cal_deltas",
    "cal_label_mask",
    "cal_loss",
    "cal_weights",
    "clamp_weights",
    "eval_mode",
    "pool_weights",
    "token_weights",
    "weighted_loss",
]


# ---------------------------------------------------------------------------------------------------------------
# Pure tensor functions
# ---------------------------------------------------------------------------------------------------------------


def clamp_weights(delta: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0, beta: float = 5.0) -> torch.Tensor:
    """`clamp(delta, alpha, beta)` on the label tokens, 0 elsewhere.

    Args:
        delta (`torch.Tensor`): (B, T) logit gain of each label token.
        mask (`torch.Tensor`): (B, T) bool, True on the label tokens taking part.
        alpha (`float`, *optional*, defaults to `1.0`): lower clamp.
        beta (`float`, *optional*, defaults to `5.0`): upper clamp.

    Examples:

    ```python
    >>> clamp_weights(torch.tensor([[-2.0, 3.0, 9.0]]), torch.tensor([[True, True, False]]))
    tensor([[1., 3., 0.]])
    ```
    """
    if not alpha <= beta:  # torch's clamp would silently give `beta` everywhere (and NaN bounds, NaN weights)
        raise ValueError(f"`alpha` (={alpha!r}) has to be <= `beta` (={beta!r})")
    return torch.where(mask, delta.clamp(alpha, beta), torch.zeros_like(delta))


def pool_weights(weights: torch.Tensor, mask: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Average of `weights` over a window of `window` positions centred on each label token, stride 1.

    Only positions of the same row that are in `mask` count, in numerator and denominator, so nothing leaks across
    samples or from prompt, image or padding positions; windows are in token positions, so two label spans of one
    sample (two assistant turns) never mix either. Entries outside `mask` are 0.

    Args:
        weights (`torch.Tensor`): (B, T) per-token weights.
        mask (`torch.Tensor`): (B, T) bool label mask.
        window (`int`, *optional*, defaults to `3`): odd window width; 1 returns `weights` (masked).

    Examples:

    ```python
    >>> w = torch.tensor([[0.0, 1.0, 3.0, 5.0, 7.0]])
    >>> pool_weights(w, torch.tensor([[False, True, True, True, False]]))
    tensor([[0., 2., 3., 4., 0.]])
    ```
    """
    if not _is_int(window) or window < 1 or window % 2 == 0:
        raise ValueError(f"`window` (={window!r}) has to be an odd integer >= 1")
    m = mask.to(weights.dtype)
    half = window // 2
    # (B, T, window) views of the zero-padded rows: padding is outside the row, so it never counts.
    num = F.pad(weights * m, (half, half)).unfold(-1, window, 1).sum(-1)
    den = F.pad(m, (half, half)).unfold(-1, window, 1).sum(-1)
    return torch.where(mask, num / den.clamp(min=1), torch.zeros_like(weights))


def token_weights(
    delta: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0, beta: float = 5.0, window: int = 3
) -> torch.Tensor:
    """CAL's weights from logit gains: `pool_weights(clamp_weights(delta, mask, alpha, beta), mask, window)`.

    Examples:

    ```python
    >>> token_weights(torch.tensor([[0.0, 2.0, 8.0]]), torch.ones(1, 3, dtype=torch.bool))
    tensor([[1.5000, 2.6667, 3.5000]])
    ```
    """
    return pool_weights(clamp_weights(delta, mask, alpha, beta), mask, window)


def weighted_loss(
    token_loss: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    normalize: str = "batch",
    num_items: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The CAL loss from per-token cross-entropies and (detached) weights.

    - `"batch"`: `sum(w * CE) / sum(w)` over the label tokens of the batch (the official code's normalisation).
    - `"sample"`: the mean over samples with label tokens of `sum_p(w * CE) / sum_p(w)` (the paper's Eq. 5); a sample
      whose weights are all 0 (possible only with `alpha = 0`) contributes 0.

    With `num_items`, the sum is divided by it instead of the batch's own normaliser (`sum(w)` or the number of
    samples): the trainer passes the total over all micro-batches of a gradient-accumulation step and all devices,
    so that the per-micro-batch losses add up to the loss of the whole step.

    A batch whose weights sum to 0 gives a loss of 0 (still connected to the graph), never 0/0.

    Args:
        token_loss (`torch.Tensor`): (B, T) per-token cross-entropy, 0 outside `mask`.
        weights (`torch.Tensor`): (B, T) weights, 0 outside `mask`; detached here.
        mask (`torch.Tensor`): (B, T) bool label mask.
        normalize (`str`, *optional*, defaults to `"batch"`): `"batch"` or `"sample"`.
        num_items (`torch.Tensor` or `float`, *optional*): global normaliser replacing the batch's own.

    Examples:

    ```python
    >>> ce, mask = torch.tensor([[1.0, 3.0]]), torch.tensor([[True, True]])
    >>> weighted_loss(ce, torch.tensor([[1.0, 3.0]]), mask)  # (1*1 + 3*3) / 4
    tensor(2.5000)
    ```
    """
    w = torch.where(mask, weights.detach().to(token_loss.dtype), torch.zeros_like(token_loss))
    ce = torch.where(mask, token_loss, torch.zeros_like(token_loss))
    if normalize == "batch":
        total = (w * ce).sum()
        denom = w.sum() if num_items is None else torch.as_tensor(num_items, dtype=total.dtype, device=total.device)
    elif normalize == "sample":
        per_sample_w = w.sum(-1)
        safe = torch.where(per_sample_w > 0, per_sample_w, torch.ones_like(per_sample_w))
        total = ((w * ce).sum(-1) / safe).sum()
        if num_items is None:
            denom = mask.any(-1).sum().to(total.dtype)
        else:
            denom = torch.as_tensor(num_items, dtype=total.dtype, device=total.device)
    else:
        raise ValueError(f"`normalize` (={normalize!r}) has to be 'batch' or 'sample'")
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


# ---------------------------------------------------------------------------------------------------------------
# Model passes
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CALOutput:
    """What [`cal_loss`] returns.

    Args:
        loss (`torch.Tensor`): scalar CAL loss (differentiable).
        weights (`torch.Tensor`): (B, T) detached weights, 0 outside `mask`.
        delta (`torch.Tensor` or `None`): (B, T) logit gains (0 outside `mask` and on samples without an image);
            `None` when the batch carried precomputed weights.
        token_loss (`torch.Tensor`): (B, T) cross-entropy of each label token (differentiable), 0 outside `mask`.
        mask (`torch.Tensor`): (B, T) bool, the label tokens taking part ([`cal_label_mask`]).
        logits (`torch.Tensor` or `None`): the model's (B, T, V) logits of the with-image forward (`None` if the
            model returned none and the loss was computed from its hidden states).
        model_outputs (`Any`): the model's full output object.
    """

    loss: torch.Tensor
    weights: torch.Tensor
    delta: torch.Tensor | None
    token_loss: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor | None
    model_outputs: Any = None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode (dropout off, LoRA dropout included) and restore each one's own mode after.

    Restoring module by module (not `model.train()`) keeps deliberately frozen parts, such as a vision tower left in
    eval mode, as they were.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def cal_label_mask(model: nn.Module | ModelAdapter, inputs: dict, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool: the label tokens CAL weights (see the module docstring for the rule).

    Args:
        model (`PreTrainedModel` or `ModelAdapter`): a supported VLM (for its image token id).
        inputs (`dict`): the batch; `input_ids`, `attention_mask` and (unless given) `labels` are read.
        labels (`torch.Tensor`, *optional*): (B, T) labels; defaults to `inputs["labels"]`.
    """
    adapter = get_adapter(model)
    labels = inputs["labels"] if labels is None else labels
    input_ids = inputs["input_ids"]
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
    real = inputs["attention_mask"].bool()
    text = real & ~adapter.image_token_mask(input_ids)
    mask = (labels != IGNORE_INDEX) & text
    mask[:, 1:] &= text[:, :-1]  # the predicting position p - 1 is a real text token
    mask[:, 0] = False  # nothing predicts the first position
    return mask


def _check_batch(adapter: ModelAdapter, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if "labels" not in inputs or inputs["labels"] is None:
        raise ValueError(
            f"CAL needs `labels` in the batch (aligned with input_ids, -100 = ignored); got {sorted(inputs)}"
        )
    adapter.check_inputs(inputs)
    labels = check_labels(inputs["labels"], inputs["input_ids"])
    check_token_ids(labels[labels != IGNORE_INDEX], adapter.vocab_size)
    mask = cal_label_mask(adapter, inputs, labels)
    if not bool(mask.any()):
        raise ValueError(
            "the batch has no label token to weight: every label is -100, or sits on padding, the first position or "
            "an image token (check the collator's labels)"
        )
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        # A row without a label token would train on nothing, silently (e.g. an answer cut off by `max_length`).
        ignored = [row for row in empty if bool((labels[row] == IGNORE_INDEX).all())]
        raise ValueError(
            f"batch row(s) {empty} have no label token to weight"
            + (f" (every label of row(s) {ignored} is -100: an answer truncated by `max_length`?)" if ignored else "")
            + ": a label must sit on a real text token predicted from a text token (not on padding, the first "
            "position, an image token or right after one); check the collator's labels and `max_length`"
        )
    return labels, mask


def _positions(adapter: ModelAdapter, inputs: dict) -> torch.Tensor:
    # One set of position ids for both passes, so that deltas are exact under left padding and (Qwen2-VL) M-RoPE.
    if inputs.get("position_ids") is not None:
        return inputs["position_ids"]
    return adapter.position_ids(inputs)


def _preset(adapter: ModelAdapter, positions: torch.Tensor) -> ModelAdapter:
    # The same adapter, but with fixed position ids and no input check: the contrast pass may run on a subset of rows
    # without their pixels (NoImage), whose positions still come from the full batch with the image.
    cls = type(adapter)
    preset = type(
        f"_Preset{cls.__name__}",
        (cls,),
        {"position_ids": lambda self, inputs: positions, "check_inputs": lambda self, inputs: None},
    )
    out = object.__new__(preset)
    out.__dict__.update(adapter.__dict__)
    return out


def _model_inputs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in _EXTRA_KEYS and not k.startswith(CONTRAST_PREFIX)}


def _contrast_pixel_inputs(adapter: ModelAdapter, inputs: dict, condition: VisualCondition) -> dict:
    first = CONTRAST_PREFIX + adapter.pixel_keys[0]
    if inputs.get(first) is None:
        raise ValueError(
            f"contrast condition {condition.name!r} changes pixels: the batch needs `{first}` (the processor's "
            f"`{adapter.pixel_keys[0]}` for the contrast images); build it with vcontrast.cal.ContrastCollator or "
            "add_contrast_pixels"
        )
    out = {k: v for k, v in inputs.items() if k in adapter.token_keys}
    for key in adapter.pixel_keys:
        value = inputs.get(CONTRAST_PREFIX + key, inputs.get(key))
        if value is not None:
            out[key] = value
    return out


@torch.no_grad()
def _contrast_gold(
    model: nn.Module,
    adapter: ModelAdapter,
    inputs: dict,
    labels: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    condition: VisualCondition | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) float32 gold logits under the contrast condition (0 off the mask), and (B,) which rows have an image."""
    has_image = adapter.image_token_mask(inputs["input_ids"]).any(-1)  # (B,)
    out = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    if not bool(has_image.any()):
        return out, has_image  # a text-only batch: delta 0, no second pass
    masked_labels = labels.masked_fill(~mask, IGNORE_INDEX)
    with eval_mode(model):
        if getattr(condition, "drops_image", False):
            rows = has_image.nonzero().squeeze(-1)
            sub = {k: inputs[k].index_select(0, rows) for k in adapter.token_keys if inputs.get(k) is not None}
            preset = _preset(adapter, positions.index_select(-2, rows))
            scores = gold_token_logits(preset, sub, masked_labels.index_select(0, rows), condition)
            out = out.index_copy(0, rows, scores.logits)
        else:
            if condition == ATTENTION_MASK:
                contrast_inputs, cond = _model_inputs(inputs), ATTENTION_MASK
            else:
                contrast_inputs, cond = _contrast_pixel_inputs(adapter, inputs, condition), None
            scores = gold_token_logits(_preset(adapter, positions), contrast_inputs, masked_labels, cond)
            out = torch.where(has_image[:, None], scores.logits, out)
    return torch.where(mask, out, torch.zeros_like(out)), has_image


def cal_deltas(model: nn.Module, inputs: dict, config: CALConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token logit gains `delta = l(gold | image) - l(gold | contrast)` in float32, without gradient.

    Both passes run in eval mode (dropout off); the model's modes are restored afterwards.

    Args:
        model (`PreTrainedModel`): a supported VLM (PEFT- or DDP-wrapped is fine).
        inputs (`dict`): the batch with `labels` (see [`cal_weights`]).
        config (`CALConfig`, *optional*): only `contrast` is read.

    Returns:
        `(delta, mask)`: (B, T) float32 gains (0 outside `mask` and on samples without image tokens) and the (B, T)
        bool [`cal_label_mask`].

    Examples:

    ```python
    >>> delta, mask = cal_deltas(model, batch)
    >>> (delta[mask] < 0).float().mean()  # share of label tokens the image argues against
    ```
    """
    config = CALConfig() if config is None else config
    adapter = get_adapter(model)
    labels, mask = _check_batch(adapter, inputs)
    positions = _positions(adapter, inputs)
    with torch.no_grad(), eval_mode(model):
        ref = gold_token_logits(
            _preset(adapter, positions), _model_inputs(inputs), labels.masked_fill(~mask, IGNORE_INDEX)
        ).logits
        con, has_image = _contrast_gold(model, adapter, inputs, labels, mask, positions, config.contrast)
    delta = torch.where(mask & has_image[:, None], ref - con, torch.zeros_like(ref))
    return delta, mask


def cal_weights(model: nn.Module, inputs: dict, config: CALConfig | None = None) -> torch.Tensor:
    """CAL's weight of every label token of a batch, shaped like `labels`.

    Args:
        model (`PreTrainedModel`): a supported VLM (LLaVA, LLaVA-NeXT, Qwen2-VL, Idefics3, PaliGemma; PEFT- or
            DDP-wrapped is fine). Unsupported families raise `ValueError`.
        inputs (`dict`): the processor's batch (`input_ids`, `attention_mask`, pixel inputs) plus `labels` aligned
            with `input_ids` (-100 = ignored; the label at p is predicted from p - 1). For an image-space contrast
            condition, also `contrast_pixel_values` etc.
        config (`CALConfig`, *optional*, defaults to `CALConfig()`): alpha, beta, window and contrast.

    Returns:
        `torch.Tensor`: (B, T) float32 detached weights; entry [b, p] weighs the label at p; 0 where the label is
        -100 or outside [`cal_label_mask`].

    Raises:
        `ValueError`: no label token to weight, image tokens without pixel inputs, or an unsupported model.

    Examples:

    ```python
    >>> weights = cal_weights(model, batch, CALConfig(alpha=1.0, beta=5.0, window=3))
    >>> weights.shape == batch["labels"].shape
    True
    ```
    """
    config = CALConfig() if config is None else config
    delta, mask = cal_deltas(model, inputs, config)
    return token_weights(delta, mask, config.alpha, config.beta, config.window)


def _scores_from_logits(
    logits: torch.Tensor, target: torch.Tensor, b_idx: torch.Tensor, p_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # Only the label rows of the logits are upcast: an (N, V) copy, not a second (B, T, V) float32 tensor.
    rows = logits[b_idx, p_idx].float()  # (N, V)
    tokens = target[b_idx, p_idx]
    ce = F.cross_entropy(rows, tokens, reduction="none")
    gold = rows.detach().gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return ce, gold


def _scores_from_hidden(
    adapter: ModelAdapter,
    hidden: torch.Tensor,
    target: torch.Tensor,
    b_idx: torch.Tensor,
    p_idx: torch.Tensor,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    # For forwards that return no logits (fused LM heads): the same CE, from the last hidden states, in chunks.
    gold, logprobs = score_tokens(
        adapter, hidden[b_idx, p_idx], target[b_idx, p_idx], logprobs=True, chunk_size=chunk_size
    )
    return -logprobs, gold.detach()


def cal_loss(
    model: nn.Module,
    inputs: dict,
    config: CALConfig | None = None,
    *,
    num_items: torch.Tensor | float | None = None,
) -> CALOutput:
    """The CAL loss of a batch: one with-image forward (with gradient) plus the no-grad contrast pass.

    The with-image forward is the model's own (through any DDP/PEFT wrapper, so gradients sync), called with the
    same position ids as the contrast pass (from the attention mask, M-RoPE for Qwen2-VL), so deltas are exact under
    left padding. Its logits give both the cross-entropy and the with-image gold logits (as in the paper, they come
    from the training forward: with dropout active in the model they include its noise; [`cal_weights`] evaluates
    both passes in eval mode). If the batch carries precomputed weights under `cal_weights` (see
    [`vcontrast.cal.precompute_weights`]), they are used as they are and no contrast pass runs.

    Normalisation (`config.normalize`):

    - `"batch"` (the official code's): `sum(w * CE) / sum(w)` over this batch's label tokens. Under gradient
      accumulation (or several devices) this loss is over the *whole* step, whose `sum(w)` is only known after the
      last micro-batch's forward. [`CALTrainer`] therefore backpropagates `sum(w * CE) / N` per micro-batch, with
      `N` the step's total number of label tokens (like transformers' `num_items_in_batch`), sums `sum(w)` over the
      step and all devices, and rescales the accumulated gradients by `N / sum(w)` before clipping and the optimizer
      step, which makes the update exactly that of one big batch. Pass `num_items` to do the same by hand.
    - `"sample"` (the paper's Eq. 5): the mean over samples of each sample's weighted mean; with `num_items` (the
      number of samples of the whole step), micro-batch losses simply add up.

    Args:
        model (`PreTrainedModel`): a supported VLM, possibly wrapped (PEFT, DDP).
        inputs (`dict`): the batch with `labels` (see [`cal_weights`]).
        config (`CALConfig`, *optional*, defaults to `CALConfig()`).
        num_items (`torch.Tensor` or `float`, *optional*): global normaliser (see [`weighted_loss`]).

    Returns:
        [`CALOutput`] with `.loss`, `.weights`, `.delta`, `.token_loss`, `.mask` and the model's `.logits`.

    Examples:

    ```python
    >>> out = cal_loss(model, batch, CALConfig())
    >>> out.loss.backward()
    >>> out.weights[batch["labels"] == -100].abs().sum()
    tensor(0.)
    ```
    """
    config = CALConfig() if config is None else config
    adapter = get_adapter(model)
    labels, mask = _check_batch(adapter, inputs)
    positions = _positions(adapter, inputs)
    precomputed = inputs.get(WEIGHTS_KEY)
    if precomputed is not None and precomputed.shape != labels.shape:
        raise ValueError(f"`{WEIGHTS_KEY}` shape {tuple(precomputed.shape)} != labels shape {tuple(labels.shape)}")

    outputs = model(**{**_model_inputs(inputs), "position_ids": positions, "use_cache": False})
    target = shift_labels(labels)  # (B, T): predicted at p
    predicts = F.pad(mask[:, 1:], (0, 1), value=False)  # (B, T): p predicts a masked label at p + 1
    b_idx, p_idx = predicts.nonzero(as_tuple=True)
    logits = getattr(outputs, "logits", None)
    if logits is not None:
        ce, gold = _scores_from_logits(logits, target, b_idx, p_idx)
    else:
        hidden = getattr(outputs, "hidden_states", None)
        if not hidden:
            raise ValueError(
                f"{type(outputs).__name__} has neither `logits` nor `hidden_states`: CAL needs the gold-token "
                "logits with the image (a fused LM head or Liger kernel drops them); call the model's plain forward "
                "or pass `output_hidden_states=True`"
            )
        ce, gold = _scores_from_hidden(adapter, hidden[-1], target, b_idx, p_idx)

    label_pos = (b_idx, p_idx + 1)
    token_loss = torch.zeros(labels.shape, dtype=ce.dtype, device=ce.device).index_put(label_pos, ce)
    if precomputed is not None:
        delta = None
        weights = torch.where(mask, precomputed.detach().float(), torch.zeros_like(token_loss.detach()))
    else:
        ref = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device).index_put(label_pos, gold)
        con, has_image = _contrast_gold(model, adapter, inputs, labels, mask, positions, config.contrast)
        delta = torch.where(mask & has_image[:, None], ref - con, torch.zeros_like(ref))
        weights = token_weights(delta, mask, config.alpha, config.beta, config.window)
    loss = weighted_loss(token_loss, weights, mask, config.normalize, num_items)
    return CALOutput(
        loss=loss,
        weights=weights,
        delta=delta,
        token_loss=token_loss,
        mask=mask,
        logits=logits,
        model_outputs=outputs,
    )


# ---------------------------------------------------------------------------------------------------------------
# Contrast pixels for image-space conditions
# ---------------------------------------------------------------------------------------------------------------


def _pixel_items(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in _TEXT_KEYS and not k.startswith(CONTRAST_PREFIX)}


def _merge_contrast(batch: dict, contrast: dict) -> dict:
    if not torch.equal(torch.as_tensor(batch["input_ids"]), torch.as_tensor(contrast["input_ids"])):
        raise ValueError(
            "the contrast images give different input_ids than the reference images: a contrast condition must keep "
            "the image size, so that the processor yields the same image-token layout"
        )
    out = dict(batch)
    for key, value in _pixel_items(contrast).items():
        out[CONTRAST_PREFIX + key] = value
    return out


def add_contrast_pixels(
    batch: dict,
    processor: Callable,
    images: Sequence,
    text: str | list[str],
    condition: VisualCondition,
    *,
    keys: Sequence[int] | None = None,
    **processor_kwargs: Any,
) -> dict:
    """The batch plus the processor's pixel inputs for the contrast images, under `contrast_<key>`.

    Each image is turned into its contrast image with `condition.apply(image, key)` (`key` = `keys[i]`, defaulting
    to the image's index, so random conditions draw per-sample masks reproducibly) and processed with the same text.

    Args:
        batch (`dict`): the reference batch `processor(images=images, text=text, ...)` (labels may be added already).
        processor (`ProcessorMixin`): the model's processor.
        images (`Sequence`): the reference images, flat or one list per sample, as passed to the processor.
        text (`str` or `list[str]`): the texts passed to the processor.
        condition (`VisualCondition`): an image-space condition (`PatchMask`, `GaussianBlur`, `DiffusionNoise`, ...).
        keys (`Sequence[int]`, *optional*): one non-negative key per image (flattened order).
        processor_kwargs: passed to the processor (use the same as for `batch`, e.g. `padding=True`).

    Returns:
        `dict`: a new batch with `contrast_pixel_values` (and `contrast_image_grid_thw`, ... as the processor gives).

    Examples:

    ```python
    >>> batch = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    >>> batch = add_contrast_pixels(batch, processor, images, texts, PatchMask(0.5), return_tensors="pt", padding=True)
    ```
    """
    if getattr(condition, "drops_image", False) or not isinstance(condition, VisualCondition):
        raise ValueError(f"condition {condition!r} has no contrast pixels; only image-space conditions do")
    counter = itertools.count() if keys is None else iter(keys)

    def convert(item):
        if isinstance(item, (list, tuple)):
            return [convert(x) for x in item]
        return condition.apply(item, next(counter))

    contrast = processor(images=convert(list(images)), text=text, **processor_kwargs)
    return _merge_contrast(batch, dict(contrast))


class ContrastCollator:
    """Wrap a collator so that each batch also carries the contrast pixels of an image-space condition.

    The wrapped collator runs twice: on the examples as they are, and on copies whose images went through
    `condition.apply(image, key)`; the pixel inputs of the second batch are added under `contrast_<key>`. Works with
    any collator reading the images from an example field (TRL's `DataCollatorForVisionLanguageModeling` reads
    `"images"` or `"image"`). For `NoImage()` and `"attention_mask"` no wrapping is needed.

    Args:
        collator (`Callable[[list[dict]], dict]`): the collator to wrap.
        condition (`VisualCondition`): the image-space contrast condition.
        image_keys (`tuple[str, ...]`, *optional*, defaults to `("images", "image")`): example fields holding images.
        key_field (`str`, *optional*): example field with a stable integer id (e.g. the dataset index) used as the
            random condition's key; by default a running count of the images seen, which restarts on resume and is
            refused in DataLoader worker processes (each worker would count from 0 and repeat the others' masks).

    Examples:

    ```python
    >>> from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
    >>> collator = ContrastCollator(DataCollatorForVisionLanguageModeling(processor), PatchMask(0.5))
    >>> trainer = CALTrainer(..., data_collator=collator, cal_config=CALConfig(contrast=PatchMask(0.5)))
    ```
    """

    def __init__(
        self,
        collator: Callable[[list[dict]], dict],
        condition: VisualCondition,
        image_keys: tuple[str, ...] = ("images", "image"),
        key_field: str | None = None,
    ):
        if getattr(condition, "drops_image", False) or not isinstance(condition, VisualCondition):
            raise ValueError(
                f"condition {condition!r} has no contrast pixels; ContrastCollator needs an image-space one"
            )
        self.collator = collator
        self.condition = condition
        self.image_keys = tuple(image_keys)
        self.key_field = key_field
        self._counter = itertools.count()

    def _convert(self, value: Any, key: int | None) -> Any:
        if isinstance(value, (list, tuple)):
            return [self._convert(v, key) for v in value]
        if value is None:
            return None
        return self.condition.apply(value, next(self._counter) if key is None else key)

    def __call__(self, examples: list[dict]) -> dict:
        if self.key_field is None and self.condition.is_random and torch.utils.data.get_worker_info() is not None:
            raise ValueError(
                f"ContrastCollator with the random condition {self.condition.name!r} runs in a DataLoader worker "
                "without `key_field`: every worker would count its images from 0 and draw the same masks; pass "
                "`key_field` (an example field with a stable integer id) or use `dataloader_num_workers=0`"
            )
        contrast_examples = []
        for example in examples:
            key = None if self.key_field is None else int(example[self.key_field])
            copy = dict(example)
            for field in self.image_keys:
                if field in copy:
                    copy[field] = self._convert(copy[field], key)
            contrast_examples.append(copy)
        batch = dict(self.collator([dict(e) for e in examples]))  # copies: some collators pop fields
        contrast = dict(self.collator(contrast_examples))
        return _merge_contrast(batch, contrast)
