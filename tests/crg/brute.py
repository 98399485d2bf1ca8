"""Brute-force CRG references: both full forwards (no cache) at every step, full-vocabulary log-softmax.

Written independently of `vcontrast.crg`: the guided formula is spelled out here, sequences are re-run from scratch,
and beam search is a plain top-k over (beam, token) by summed per-step log-probabilities of the guided distribution,
`log_softmax(g_t)` (what CRG decoding returns at every step, DESIGN.md: beam search maximises `CRG.score`'s default).
"""

from __future__ import annotations

import torch

from vcontrast.models import get_adapter

# Token type of appended tokens: PaliGemma's suffix is causal (1), Qwen2-VL's text is 0, Gemma 3's text is 0 (its 1
# marks image tokens).
APPENDED_TYPE = {"token_type_ids": 1, "mm_token_type_ids": 0}
APPENDED_TYPE_OF = {"gemma3": {"token_type_ids": 0}}


def with_tokens(inputs: dict, ids: torch.Tensor, model_type: str = "") -> dict:
    """The prompt batch `inputs` (B, T) with its rows replaced by `ids` (B, T + n): mask and token types extended."""
    batch = {k: v for k, v in inputs.items() if k != "labels"}
    extra = ids.shape[1] - inputs["input_ids"].shape[1]
    batch["input_ids"] = ids
    ones = torch.ones(ids.shape[0], extra, dtype=inputs["attention_mask"].dtype, device=ids.device)
    batch["attention_mask"] = torch.cat([inputs["attention_mask"], ones], dim=1)
    for key, value in APPENDED_TYPE_OF.get(model_type, APPENDED_TYPE).items():
        if key in batch:
            batch[key] = torch.cat([batch[key], torch.full_like(ones, value, dtype=batch[key].dtype)], dim=1)
    return batch


def full_logits(model, inputs: dict, ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, T + n, V) of a full forward (no cache) of the prompt batch continued with `ids`' extra tokens."""
    batch = with_tokens(inputs, ids, model.config.model_type)
    positions = get_adapter(model).position_ids(batch)  # what generate uses: from the attention mask
    with torch.no_grad():
        return model(**batch, position_ids=positions, use_cache=False).logits.float()


def guided(ref_logits: torch.Tensor, con_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """The unnormalised guided scores g = (1 + alpha) lp_ref - alpha lp_con."""
    return (1 + alpha) * torch.log_softmax(ref_logits, -1) - alpha * torch.log_softmax(con_logits, -1)


def guided_logprobs(ref_logits: torch.Tensor, con_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """The guided distribution's log-probabilities, log_softmax(g): what CRG decoding returns at each step."""
    return torch.log_softmax(guided(ref_logits, con_logits, alpha), -1)


def greedy(model, reference: dict, contrast: dict, alpha: float, max_new_tokens: int, eos: int, pad: int, banned=()):
    """CRG greedy decoding by re-running both streams from scratch at every step; generate's EOS/pad handling.

    Tokens in `banned` are never chosen (`suppress_tokens`): a full forward cannot re-run a sequence in which the
    model generated its own image placeholder token, while a cached decoding step can."""
    ids = reference["input_ids"].clone()
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        scores = guided(full_logits(model, reference, ids)[:, -1], full_logits(model, contrast, ids)[:, -1], alpha)
        scores[:, list(banned)] = -torch.inf
        nxt = torch.where(unfinished, scores.argmax(-1), torch.full_like(ids[:, 0], pad))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        unfinished &= nxt != eos
        if not unfinished.any():
            break
    return ids


def beam_search(model, reference: dict, contrast: dict, alpha: float, num_beams: int, steps: int, banned):
    """CRG beam search by brute force: both full forwards re-run for every beam at every step, the guided
    distribution's log-probabilities `log_softmax(g_t)` summed over steps, with tokens `banned` (EOS, image
    placeholders) suppressed the way `suppress_tokens` does it after the guidance (the CRG processor runs first in
    generate's list): their log-probabilities become -inf, and nothing is renormalised after that. Without EOS every
    beam runs `steps` tokens and the best summed score wins.

    Returns `(sequences, scores)`: the best sequence per prompt row (R, T + steps) and its summed log-probability
    (R,), which generate reports as `sequences_scores` times `steps ** -length_penalty`."""
    best, best_scores = [], []
    for row in range(reference["input_ids"].shape[0]):
        ref, con = dict(_row(reference, row)), dict(_row(contrast, row))
        beams = [(0.0, ref["input_ids"][0])]
        for _ in range(steps):
            candidates = []
            for score, seq in beams:
                step = guided_logprobs(
                    full_logits(model, ref, seq[None])[0, -1], full_logits(model, con, seq[None])[0, -1], alpha
                )
                step[list(banned)] = -torch.inf
                values, tokens = step.topk(2 * num_beams)
                candidates += [
                    (score + v, torch.cat([seq, t[None]])) for v, t in zip(values.tolist(), tokens, strict=True)
                ]
            candidates.sort(key=lambda c: -c[0])
            beams = candidates[:num_beams]
        best.append(beams[0][1])
        best_scores.append(beams[0][0])
    return torch.stack(best), torch.tensor(best_scores)


def _row(inputs: dict, row: int):
    """The items of a one-image-per-row batch restricted to one row (pixel inputs included)."""
    batch = inputs["input_ids"].shape[0]
    for key, value in inputs.items():
        if key == "labels":
            continue
        if key == "pixel_values" and "image_grid_thw" in inputs:  # Qwen: flattened patches of all images
            sizes = inputs["image_grid_thw"].prod(-1).tolist()
            start = sum(sizes[:row])
            yield key, value[start : start + sizes[row]]
        elif isinstance(value, torch.Tensor) and value.shape[0] == batch:
            yield key, value[row : row + 1]
        else:
            yield key, value


def candidate_scores(model, reference: dict, contrast: dict, tokens: list[int], alpha: float, normalize: bool):
    """Per-token guided scores of `tokens` after a one-row prompt: two full forwards of prompt + candidate."""
    ids = torch.cat([reference["input_ids"], torch.tensor([tokens], device=reference["input_ids"].device)], dim=1)
    n = len(tokens)
    ref = full_logits(model, reference, ids)[0, -n - 1 : -1]
    con = full_logits(model, contrast, ids)[0, -n - 1 : -1]
    g = guided(ref, con, alpha)
    if normalize:
        g = torch.log_softmax(g, -1)
    return g[torch.arange(n), torch.tensor(tokens, device=g.device)]
