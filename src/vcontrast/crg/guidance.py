"""CRG's guided next-token scores, as one pure tensor function shared by generation and scoring.

`g = (1 + alpha) * log_softmax(l_ref) - alpha * log_softmax(l_con)` (DESIGN.md §1), optionally with VCD's
plausibility cutoff: tokens whose reference log-probability is below `log(beta) + max lp_ref` get `-inf`.

`alpha = 0` turns guidance off altogether, cutoff included: every path (scoring, the batched decoder, the logits
processor, `CRG.generate`) then gives the plain model's log-probs and tokens. The cutoff belongs to the contrast
(VCD applies it to keep the contrast from promoting implausible tokens); with no contrast there is nothing for it
to guard against.
"""

from __future__ import annotations

import math
import numbers

import torch


def check_alpha(alpha: float) -> float:
    """`alpha` as a float; raises ValueError naming it unless it is a finite number >= 0."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"`alpha` (={alpha!r}) has to be a finite number >= 0")
    return float(alpha)


def check_beta(plausibility_beta: float | None) -> float | None:
    """`plausibility_beta` as a float or None; raises ValueError naming it unless it lies in (0, 1]."""
    if plausibility_beta is None:
        return None
    beta = plausibility_beta
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 < beta <= 1:
        raise ValueError(f"`plausibility_beta` (={plausibility_beta!r}) has to be None or a number in (0, 1]")
    return float(beta)


def guided_logprobs(
    reference: torch.Tensor,
    contrast: torch.Tensor,
    alpha: float = 1.0,
    plausibility_beta: float | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """CRG's guided scores `g = (1 + alpha) * lp_ref - alpha * lp_con` from two sets of logits (or log-probs), or
    with `normalize=True` the guided distribution's log-probabilities `log_softmax(g)`.

    Both inputs go through `log_softmax` (idempotent on log-probs), so raw logits and log-probs give the same result.
    `g` itself is not normalised (its exponentials do not sum to 1); `log_softmax(g)` differs from it by one constant
    per position, so both give the same argmax and the same sampling distribution. Decoding uses `log_softmax(g)`
    (so that beam search sums log-probabilities, as `CRG.score` does by default); scoring offers both.

    Args:
        reference (`torch.Tensor`): (..., V) logits given the image.
        contrast (`torch.Tensor`): (..., V) logits given the contrast image, or (..., K, V) for K contrast images
            whose log-probs are averaged (the `"each"` mode, one contrast image per region).
        alpha (`float`, *optional*, defaults to 1.0): guidance strength, >= 0.
        plausibility_beta (`float`, *optional*): VCD's cutoff in (0, 1]; `None` (default) keeps every token. Not
            applied at `alpha=0`.
        normalize (`bool`, *optional*, defaults to `False`): return `log_softmax(g)` instead of `g`.

    Returns:
        `torch.Tensor`: (..., V) float32, a new tensor; `-inf` for tokens removed by the cutoff.

    Examples:

    ```python
    >>> g = guided_logprobs(torch.tensor([2.0, 0.0]), torch.tensor([2.0, 2.0]), alpha=1.0)
    >>> g.argmax().item()
    0
    ```
    """
    lp_ref = torch.log_softmax(reference.float(), dim=-1)
    if alpha == 0:  # guidance off: the plain model, on every path (no contrast, no cutoff; see the doc)
        return lp_ref  # already normalised
    lp_con = torch.log_softmax(contrast.float(), dim=-1)
    if lp_con.dim() == lp_ref.dim() + 1:
        lp_con = lp_con.mean(-2)
    if lp_con.shape != lp_ref.shape:
        raise ValueError(f"contrast scores of shape {tuple(contrast.shape)} do not match {tuple(reference.shape)}")
    guided = (1 + alpha) * lp_ref - alpha * lp_con
    if plausibility_beta is not None:
        cutoff = math.log(plausibility_beta) + lp_ref.max(dim=-1, keepdim=True).values
        guided = guided.masked_fill(lp_ref < cutoff, -math.inf)  # the argmax of lp_ref always stays finite
    return torch.log_softmax(guided, dim=-1) if normalize else guided
