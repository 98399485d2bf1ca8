"""The one rule for the tokens of a candidate text: the tokens the model itself would produce after the prompt.

Tokenizing a candidate on its own is wrong on the tokenizers real checkpoints have: after LLaVA-1.5's `ASSISTANT:`
a byte-level BPE model writes `Ġyes` (and a SentencePiece model `▁yes`), never the bare `yes` that
`tokenizer("yes")` gives. So the rendered prompt and the prompt plus separator plus candidate are tokenized jointly,
and the candidate's tokens are the joint tokens after the prompt's:

- separator: one space when the rendered prompt ends in a non-space character (`ASSISTANT:`), nothing when it
  ends in whitespace or a newline (Qwen's `assistant\\n`), in a special token (Mistral's `[/INST]`, after which
  the answer starts without a space), or when the candidate itself starts with whitespace;
- boundary merge: when the joint tokens do not start with all of the prompt's tokens (the last prompt token fused
  with the candidate's first characters, e.g. a prompt ending in a space), the split moves back to the last token
  both share: the candidate's tokens are the joint tokens from there, and `drop` says how many of the prompt's
  trailing tokens the scorer has to remove before scoring them.

Scoring, re-ranking and matching (`vcontrast.crg.CRG`) and the lmms-eval model call this module. The labels of
`vcontrast.cal.ConversationCollator` follow the same rule on the jointly tokenized conversation (a token that merges
the prompt's end with the answer's start is the answer's); tests/test_candidates.py checks them against
`candidate_tokens` on every family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CandidateTokens",
    "candidate_separator",
    "candidate_tokens",
    "shared_prefix_length",
    "shared_suffix_length",
]


@dataclass(frozen=True)
class CandidateTokens:
    """The token ids of one candidate after a prompt.

    Args:
        ids (`tuple[int, ...]`): the ids to score, in order (the joint tokenization's tail).
        drop (`int`): how many of the prompt's last tokens `ids` replace (0 unless a token merges across the
            boundary); the scorer removes them from the prompt and scores `ids` after the shortened prompt.
    """

    ids: tuple[int, ...]
    drop: int = 0


def candidate_separator(rendered_prompt: str, candidate: str, special_tokens: Sequence[str] = ()) -> str:
    """`" "` when the prompt ends in a non-space character that does not close one of `special_tokens`, and the
    candidate does not start with whitespace; else `""`.

    Examples:

    ```python
    >>> candidate_separator("USER: <image>\\nWhat is it? ASSISTANT:", "a cup")
    ' '
    >>> candidate_separator("<|im_start|>assistant\\n", "a cup")
    ''
    >>> candidate_separator("[INST]What is it?[/INST]", "a cup", special_tokens=["[INST]", "[/INST]"])
    ''
    ```
    """
    if not rendered_prompt or rendered_prompt[-1].isspace() or candidate[:1].isspace():
        return ""
    if any(token and rendered_prompt.endswith(token) for token in special_tokens):
        return ""
    return " "


def shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def shared_suffix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many trailing tokens `a` and `b` share."""
    return shared_prefix_length(list(reversed(a)), list(reversed(b)))


def candidate_tokens(
    processor_or_tokenizer: Any, rendered_prompt: str, candidates: Sequence[str]
) -> list[CandidateTokens]:
    """The tokens the model would produce for each candidate after `rendered_prompt` (see the module doc).

    Args:
        processor_or_tokenizer: a processor (its `.tokenizer` is used) or a tokenizer.
        rendered_prompt (`str`): the prompt exactly as the model reads it, generation prompt included (e.g. the
            chat template's output); image placeholders may stay unexpanded, only the text near its end matters.
        candidates (`Sequence[str]`): the candidate texts, without the separator.

    Returns:
        `list[CandidateTokens]`: per candidate, the ids and how many trailing prompt tokens they replace.

    Raises:
        `ValueError`: a candidate is not a string or has no tokens of its own after the prompt.

    Examples:

    ```python
    >>> [c.ids for c in candidate_tokens(processor, "USER: <image>\\nIs it red? ASSISTANT:", ["yes"])]
    [(3869,)]  # the id of "▁yes" (or "Ġyes"), not of the bare "yes"
    ```
    """
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    if not isinstance(rendered_prompt, str):
        raise ValueError(f"`rendered_prompt` (={rendered_prompt!r}) has to be a string")  # noqa: TRY004
    prompt_ids = _encode(tokenizer, rendered_prompt)
    specials = [token for token in getattr(tokenizer, "all_special_tokens", []) if token]
    out = []
    for candidate in candidates:
        if not isinstance(candidate, str):
            raise ValueError(f"candidate {candidate!r} has to be a string")  # noqa: TRY004
        if not candidate.strip():
            raise ValueError(f"candidate {candidate!r} has no tokens: it is empty or only whitespace")
        separator = candidate_separator(rendered_prompt, candidate, specials)
        joint = _encode(tokenizer, rendered_prompt + separator + candidate)
        keep = shared_prefix_length(prompt_ids, joint)
        ids = tuple(joint[keep:])
        if not ids:
            raise ValueError(f"candidate {candidate!r} has no tokens after the prompt")
        out.append(CandidateTokens(ids=ids, drop=len(prompt_ids) - keep))
    return out


def _encode(tokenizer: Any, text: str) -> list[int]:
    # No special tokens: a BOS is already in the rendered prompt (or added in front by the processor) and an EOS
    # would end the candidate.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
