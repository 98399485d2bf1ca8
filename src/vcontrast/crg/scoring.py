"""Guided log-likelihoods of candidate continuations, with each prompt prefilled once per condition.

All prompts of a call (reference and contrast rows) run as one prefill forward that fills one KV cache. The
(prompt row, candidate) pairs then run on that cached prefix: each pair gets a copy of its prompt's cache rows and
only the candidate tokens go through the model. The first candidate token is predicted from the prefill's last
hidden state, so single-token candidates ("yes") need no second forward at all.

Memory. A pair's cache copy is as large as its prompt's cache (image tokens included), so copying all pairs at once
would grow with the number of candidates times the image length. The jobs run in chunks instead: a chunk takes as
many jobs as fit their pairs' copies into `chunk_bytes` (by default `DEFAULT_CHUNK_FACTOR` = 4 times the prefill
cache, so scoring needs about five times the prompts' cache whatever the number of candidates, and four candidates of
one prompt still run in one chunk; at least one job per chunk). Chunking changes no score: every pair attends to the
same cached prefix. Each chunk costs one more (short) forward, so a larger budget is faster where memory allows.

Full-vocabulary log-probs are needed for both streams (the guided distribution is renormalised over the
vocabulary), but only at the candidate positions: `n` rows of `V` per pair, computed from the hidden states with
the output head, one score job at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vcontrast._compat import cache_from_output, cache_kwargs, cache_nbytes, select_cache_rows
from vcontrast.contrast import head_logits
from vcontrast.crg.decode import batch_rows, model_inputs
from vcontrast.crg.guidance import guided_logprobs
from vcontrast.models import ModelAdapter, get_adapter

# The default memory budget of one chunk's cache copies, in multiples of the prefill cache (see the module doc).
DEFAULT_CHUNK_FACTOR = 4
# What a job's per-token score is (see `score_jobs`).
SCORES = ("normalized", "guided", "log_ratio")


@dataclass(frozen=True)
class ScoreJob:
    """One guided score: `tokens` after prefix row `reference`, contrasted with prefix rows `contrast` (their
    log-probs are averaged when there are several, one contrast image per region)."""

    reference: int
    contrast: tuple[int, ...]
    tokens: tuple[int, ...]


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Raise a ValueError unless every row of `attention_mask` (B, T) ends in a real token (left padding).

    Prefix scoring reads each prompt's last hidden state from the last column and appends the candidate after it;
    on a right-padded row that column is padding, and the scores would be silently wrong.
    """
    last = attention_mask[:, -1]
    if not bool((last != 0).all()):
        rows = (last == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"prompt rows {rows} end in padding (right-padded): candidate scoring needs left padding; build the batch "
            "with `processor.tokenizer.padding_side = 'left'` (CRG.prepare does)"
        )


def check_chunk_bytes(chunk_bytes: int | None) -> int | None:
    """`chunk_bytes` as given; raises ValueError naming it unless it is None or a positive integer."""
    if chunk_bytes is not None and (
        isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1
    ):
        raise ValueError(f"`chunk_bytes` (={chunk_bytes!r}) has to be None or a positive number of bytes")
    return chunk_bytes


@torch.no_grad()
def score_jobs(
    model: torch.nn.Module | ModelAdapter,
    prefix: dict,
    jobs: list[ScoreJob],
    alpha: float = 1.0,
    plausibility_beta: float | None = None,
    score: str = "normalized",
    chunk_bytes: int | None = None,
) -> list[torch.Tensor]:
    """Per-token scores of each job's tokens, on a shared, once-prefilled prefix batch.

    Args:
        model (`PreTrainedModel` or `ModelAdapter`): a supported VLM.
        prefix (`dict`): the processor's batch of P prompt rows (reference and contrast rows, left-padded), with
            pixel inputs; each row is prefilled once.
        jobs (`list[ScoreJob]`): what to score; rows index `prefix`.
        alpha (`float`, *optional*, defaults to 1.0): guidance strength.
        plausibility_beta (`float`, *optional*): VCD's cutoff; tokens it removes score `-inf` (not with
            `"log_ratio"`, which has no guided distribution).
        score (`str`, *optional*, defaults to `"normalized"`): per token, `"normalized"`: `log_softmax(g)[y]`;
            `"guided"`: `g[y]`, with `g = (1 + alpha) * lp_ref - alpha * lp_con`; `"log_ratio"`:
            `lp_ref[y] - lp_con[y]` (CRG's re-ranking score, independent of `alpha`).
        chunk_bytes (`int`, *optional*): the most bytes the pairs' cache copies of one chunk may take (see the
            module doc); `None` (default): `DEFAULT_CHUNK_FACTOR` times the size of the prefill cache.

    Returns:
        `list[torch.Tensor]`: per job, float32 (n,) scores of its n tokens.

    Raises:
        `ValueError`: right-padded prompt rows, a job without tokens, or a bad `score` / `chunk_bytes`.
    """
    if score not in SCORES:
        raise ValueError(f"`score` (={score!r}) has to be one of {SCORES}")
    check_chunk_bytes(chunk_bytes)
    adapter = get_adapter(model)
    adapter.check_inputs(prefix)
    if any(len(job.tokens) == 0 for job in jobs):
        raise ValueError("a candidate has no tokens: every candidate needs at least one token")
    mask = prefix["attention_mask"]
    check_left_padded(mask)
    # Positions as with the image, also on rows whose image tokens are masked out of the attention ("no image").
    full = mask.masked_fill(adapter.image_token_mask(prefix["input_ids"]), 1)
    positions = adapter.position_ids({**prefix, "attention_mask": full})  # (P, T) or (3, P, T)
    out = adapter.backbone()(**model_inputs(adapter, prefix), position_ids=positions, use_cache=True)
    last_hidden = out.last_hidden_state[:, -1]  # (P, H): left padding puts every prompt's last token here
    cache = cache_from_output(out)
    del out  # the prefill's hidden states (P, T, H) are not needed any more
    rows, length = mask.shape
    token_bytes = cache_nbytes(cache) / (rows * length)  # cache bytes of one token of one row
    budget = DEFAULT_CHUNK_FACTOR * cache_nbytes(cache) if chunk_bytes is None else chunk_bytes

    results: list[torch.Tensor] = []
    for chunk in _chunks(jobs, token_bytes, length, budget):
        # One suffix row per distinct (prefix row, tokens) pair of the chunk with more than one token: a pair's
        # first token is predicted from the prompt's last hidden state, with no forward.
        pairs: dict[tuple[int, tuple[int, ...]], int] = {}
        for job in chunk:
            if len(job.tokens) > 1:
                for row in (job.reference, *job.contrast):
                    pairs.setdefault((row, job.tokens), len(pairs))
        suffix_hidden = _suffix_hidden(adapter, cache, mask, positions, prefix, list(pairs))
        for job in chunk:
            hidden = torch.stack(
                [
                    _pair_hidden(last_hidden, suffix_hidden, pairs, row, job.tokens)
                    for row in (job.reference, *job.contrast)
                ]
            )  # (1 + K, n, H)
            results.append(_job_scores(head_logits(adapter, hidden), job.tokens, alpha, plausibility_beta, score))
    return results


def _job_scores(
    logits: torch.Tensor, tokens: tuple[int, ...], alpha: float, plausibility_beta: float | None, score: str
) -> torch.Tensor:
    # logits (1 + K, n, V): the reference row, then K contrast rows; returns the (n,) per-token scores.
    contrast = logits[1:].transpose(0, 1)  # (n, K, V)
    target = torch.tensor(tokens, device=logits.device)[:, None]
    if score == "log_ratio":
        lp_ref = torch.log_softmax(logits[0], dim=-1)
        lp_con = torch.log_softmax(contrast, dim=-1).mean(-2)
        return (lp_ref - lp_con).gather(-1, target).squeeze(-1)
    guided = guided_logprobs(logits[0], contrast, alpha, plausibility_beta, normalize=score == "normalized")  # (n, V)
    return guided.gather(-1, target).squeeze(-1)


def _chunks(jobs: list[ScoreJob], token_bytes: float, length: int, budget: float) -> list[list[ScoreJob]]:
    # Consecutive jobs whose pairs' cache copies (prefix plus suffix tokens) fit the budget; at least one job each.
    # One-token jobs copy nothing (their only token is predicted from the prefill).
    chunks: list[list[ScoreJob]] = []
    current: list[ScoreJob] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    used = 0.0
    for job in jobs:
        pairs = set() if len(job.tokens) == 1 else {(row, job.tokens) for row in (job.reference, *job.contrast)}
        cost = len(pairs - seen) * token_bytes * (length + len(job.tokens) - 1)
        if current and cost > 0 and used + cost > budget:
            chunks.append(current)
            current, seen, used = [], set(), 0.0
            cost = len(pairs) * token_bytes * (length + len(job.tokens) - 1)
        current.append(job)
        seen |= pairs
        used += cost
    if current:
        chunks.append(current)
    return chunks


def _pair_hidden(
    last_hidden: torch.Tensor, suffix_hidden: torch.Tensor | None, pairs: dict, row: int, tokens: tuple[int, ...]
) -> torch.Tensor:
    # Hidden states that predict the pair's tokens: the prompt's last one, then those of its tokens but the last.
    first = last_hidden[row][None]  # (1, H)
    if len(tokens) == 1:
        return first
    return torch.cat([first, suffix_hidden[pairs[(row, tokens)], : len(tokens) - 1]])  # (n, H)


def _suffix_hidden(
    adapter: ModelAdapter,
    cache,
    mask: torch.Tensor,
    positions: torch.Tensor,
    prefix: dict,
    pairs: list[tuple[int, tuple[int, ...]]],
) -> torch.Tensor | None:
    """Hidden states (S, L, H) of all pairs' tokens but the last, as one right-padded batch on the cached prefix.
    `cache` is not changed: the pairs run on a copy of their rows."""
    if not pairs:
        return None
    length = max(len(tokens) for _, tokens in pairs) - 1
    device = mask.device
    rows = torch.tensor([row for row, _ in pairs], device=device)
    ids = torch.zeros(len(pairs), length, dtype=torch.long, device=device)
    suffix_mask = torch.zeros_like(ids)
    for i, (_, tokens) in enumerate(pairs):
        ids[i, : len(tokens) - 1] = torch.tensor(tokens[:-1], device=device)
        suffix_mask[i, : len(tokens) - 1] = 1
    steps = torch.arange(1, length + 1, device=device)
    call = {
        "input_ids": ids,
        "attention_mask": torch.cat([mask[rows], suffix_mask.to(mask.dtype)], dim=-1),
        "position_ids": batch_rows(positions[..., -1:], rows) + steps,  # (S, L) or (3, S, L)
        "use_cache": True,
        **cache_kwargs(select_cache_rows(cache, rows)),  # each prompt's cache, once per pair of the chunk
    }
    for key, value in adapter.generated_token_types.items():
        if key in adapter.token_keys and prefix.get(key) is not None:
            call[key] = torch.full_like(ids, value)
    return adapter.backbone()(**call).last_hidden_state
