"""Guided log-likelihoods of candidate continuations, with each prompt prefilled once per condition.

All prompts of a call (reference and contrast rows) run as one prefill forward that fills one KV cache. Every
(prompt row, candidate) pair then runs as one batch on that cached prefix: the cache rows are copied per pair and
only the candidate tokens go through the model. The first candidate token is predicted from the prefill's last
hidden state, so single-token candidates ("yes") need no second forward at all.

Full-vocabulary log-probs are needed for both streams (the guided distribution is renormalised over the
vocabulary), but only at the candidate positions: `n` rows of `V` per pair, computed from the hidden states with
the output head, one score job at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vcontrast._compat import cache_from_output, cache_kwargs
from vcontrast.contrast import head_logits
from vcontrast.crg.decode import batch_rows, model_inputs
from vcontrast.crg.guidance import guided_logprobs
from vcontrast.models import ModelAdapter, get_adapter


@dataclass(frozen=True)
class ScoreJob:
    """One guided score: `tokens` after prefix row `reference`, contrasted with prefix rows `contrast` (their
    log-probs are averaged when there are several, one contrast image per region)."""

    reference: int
    contrast: tuple[int, ...]
    tokens: tuple[int, ...]


@torch.no_grad()
def score_jobs(
    model: torch.nn.Module | ModelAdapter,
    prefix: dict,
    jobs: list[ScoreJob],
    alpha: float = 1.0,
    plausibility_beta: float | None = None,
    normalize: bool = True,
) -> list[torch.Tensor]:
    """Per-token guided scores of each job's tokens, on a shared, once-prefilled prefix batch.

    Args:
        model (`PreTrainedModel` or `ModelAdapter`): a supported VLM.
        prefix (`dict`): the processor's batch of P prompt rows (reference and contrast rows, left-padded), with
            pixel inputs; each row is prefilled once.
        jobs (`list[ScoreJob]`): what to score; rows index `prefix`.
        alpha (`float`, *optional*, defaults to 1.0): guidance strength.
        plausibility_beta (`float`, *optional*): VCD's cutoff; tokens it removes score `-inf`.
        normalize (`bool`, *optional*, defaults to `True`): per-token `log_softmax(g)[y]` (True) or `g[y]` (False),
            with `g = (1 + alpha) * lp_ref - alpha * lp_con`.

    Returns:
        `list[torch.Tensor]`: per job, float32 (n,) scores of its n tokens.
    """
    adapter = get_adapter(model)
    adapter.check_inputs(prefix)
    if any(len(job.tokens) == 0 for job in jobs):
        raise ValueError("a candidate has no tokens: every candidate needs at least one token")
    mask = prefix["attention_mask"]
    positions = adapter.position_ids(prefix)  # (P, T) or (3, P, T)
    out = adapter.backbone()(**model_inputs(adapter, prefix), position_ids=positions, use_cache=True)
    last_hidden = out.last_hidden_state[:, -1]  # (P, H): left padding puts every prompt's last token here

    # One suffix row per distinct (prefix row, tokens) pair; its first token needs no forward (see module doc).
    pairs: dict[tuple[int, tuple[int, ...]], int] = {}
    for job in jobs:
        for row in (job.reference, *job.contrast):
            pairs.setdefault((row, job.tokens), len(pairs))
    pair_list = list(pairs)
    suffix_hidden = _suffix_hidden(adapter, cache_from_output(out), mask, positions, prefix, pair_list)

    results = []
    for job in jobs:
        index = [pairs[(row, job.tokens)] for row in (job.reference, *job.contrast)]
        hidden = torch.stack([_pair_hidden(last_hidden, suffix_hidden, pair_list[i], i) for i in index])
        logits = head_logits(adapter, hidden)  # (1 + K, n, V)
        contrast = logits[1:].transpose(0, 1)  # (n, K, V)
        guided = guided_logprobs(logits[0], contrast, alpha, plausibility_beta)  # (n, V)
        if normalize:
            guided = torch.log_softmax(guided, dim=-1)
        target = torch.tensor(job.tokens, device=guided.device)
        results.append(guided.gather(-1, target[:, None]).squeeze(-1))
    return results


def _pair_hidden(last_hidden: torch.Tensor, suffix_hidden: torch.Tensor | None, pair, index: int) -> torch.Tensor:
    # Hidden states that predict the pair's tokens: the prompt's last one, then those of its tokens but the last.
    row, tokens = pair
    first = last_hidden[row][None]  # (1, H)
    if len(tokens) == 1:
        return first
    return torch.cat([first, suffix_hidden[index, : len(tokens) - 1]])  # (n, H)


def _suffix_hidden(
    adapter: ModelAdapter,
    cache,
    mask: torch.Tensor,
    positions: torch.Tensor,
    prefix: dict,
    pairs: list[tuple[int, tuple[int, ...]]],
) -> torch.Tensor | None:
    """Hidden states (S, L, H) of all pairs' tokens but the last, as one right-padded batch on the cached prefix."""
    length = max(len(tokens) for _, tokens in pairs) - 1
    if length == 0:
        return None
    device = mask.device
    rows = torch.tensor([row for row, _ in pairs], device=device)
    ids = torch.zeros(len(pairs), length, dtype=torch.long, device=device)
    suffix_mask = torch.zeros_like(ids)
    for i, (_, tokens) in enumerate(pairs):
        ids[i, : len(tokens) - 1] = torch.tensor(tokens[:-1], device=device)
        suffix_mask[i, : len(tokens) - 1] = 1
    cache.batch_select_indices(rows)  # copies each prompt's cache for each of its pairs
    steps = torch.arange(1, length + 1, device=device)
    call = {
        "input_ids": ids,
        "attention_mask": torch.cat([mask[rows], suffix_mask.to(mask.dtype)], dim=-1),
        "position_ids": batch_rows(positions[..., -1:], rows) + steps,  # (S, L) or (3, S, L)
        "use_cache": True,
        **cache_kwargs(cache),
    }
    for key, value in adapter.generated_token_types.items():
        if key in adapter.token_keys and prefix.get(key) is not None:
            call[key] = torch.full_like(ids, value)
    return adapter.backbone()(**call).last_hidden_state
