"""The candidate-token rule on the tokenizer kinds real checkpoints have (trained in-process), and CRG scoring of a
candidate against the log-probabilities of exactly the ids greedy generation emits for that text."""

import pytest
import torch
from transformers import LogitsProcessor

from tests import tiny_models as tm
from vcontrast.candidates import (
    CandidateTokens,
    candidate_separator,
    candidate_tokens,
    shared_prefix_length,
    shared_suffix_length,
)
from vcontrast.crg import CRG

TRAINED = ("byte_bpe", "sentencepiece", "sentencepiece_no_prefix")
WORD_START = {"byte_bpe": "Ġ", "sentencepiece": "▁", "sentencepiece_no_prefix": "▁"}
LLAVA_PROMPT = "USER: <image>\nwhat is in the box ? ASSISTANT:"
QWEN_PROMPT = "<|im_start|>user\nwhat is in the box ?<|im_end|>\n<|im_start|>assistant\n"


def tokenizer(kind):
    return tm.make_tokenizer(kind, ("<image>", "<|im_start|>", "<|im_end|>"))


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(list(ids))


def test_separator():
    assert candidate_separator("ASSISTANT:", "yes") == " "
    assert candidate_separator("assistant\n", "yes") == ""
    assert candidate_separator("ASSISTANT: ", "yes") == ""
    assert candidate_separator("ASSISTANT:", " yes") == ""
    assert candidate_separator("", "yes") == ""
    assert candidate_separator("[INST]is it red?[/INST]", "yes", ["[INST]", "[/INST]"]) == ""  # Mistral
    assert candidate_separator("[INST]is it red?[/INST]", "yes") == " "


def test_shared_prefix_and_suffix_length():
    assert shared_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert shared_prefix_length([1, 2], [1, 2, 3]) == 2
    assert shared_prefix_length([], [1]) == 0
    assert shared_suffix_length([9, 2, 3], [1, 7, 2, 3]) == 2
    assert shared_suffix_length([1], [2]) == 0


@pytest.mark.parametrize("kind", TRAINED)
def test_after_a_colon_the_candidate_takes_the_word_start_token(kind):
    """`ASSISTANT:` + "yes" is scored as `Ġyes` / `▁yes` (what the model writes), never the bare `yes`."""
    tok = tokenizer(kind)
    (yes,) = candidate_tokens(tok, LLAVA_PROMPT, ["yes"])
    assert yes == CandidateTokens(ids=(tok.convert_tokens_to_ids(WORD_START[kind] + "yes"),), drop=0)
    assert yes.ids != tuple(tok("yes", add_special_tokens=False)["input_ids"]) or kind == "sentencepiece"
    (cup,) = candidate_tokens(tok, LLAVA_PROMPT, ["a red cup"])
    assert tokens(tok, cup.ids) == [WORD_START[kind] + w for w in ("a", "red", "cup")]


@pytest.mark.parametrize("kind", TRAINED)
def test_after_a_newline_there_is_no_separator(kind):
    tok = tokenizer(kind)
    prompt_ids = tok(QWEN_PROMPT, add_special_tokens=False)["input_ids"]
    for candidate in ("yes", "a red cup", "the cat is left of the dog"):
        (got,) = candidate_tokens(tok, QWEN_PROMPT, [candidate])
        joint = tok(QWEN_PROMPT + candidate, add_special_tokens=False)["input_ids"]
        assert got.drop == 0 and list(got.ids) == joint[len(prompt_ids) :]
        assert tok.decode(list(got.ids)) == candidate
        assert not tokens(tok, got.ids)[0].startswith(WORD_START[kind])  # no space was invented


@pytest.mark.parametrize("kind", TRAINED)
def test_every_candidate_round_trips_to_prompt_plus_separator_plus_text(kind):
    tok = tokenizer(kind)
    prompt_ids = tok(LLAVA_PROMPT, add_special_tokens=False)["input_ids"]
    candidates = ["yes", "no", "a red cup", "héllo wörld", "(A) blue", "12"]
    for candidate, got in zip(candidates, candidate_tokens(tok, LLAVA_PROMPT, candidates), strict=True):
        assert got.drop == 0
        text = tok.decode(prompt_ids + list(got.ids))
        assert text.endswith("ASSISTANT: " + candidate)


@pytest.mark.parametrize("kind", TRAINED)
def test_boundary_merge_resplits_at_the_last_shared_token(kind):
    """A prompt that ends in a space: its last token (`Ġ` / `▁`) merges into the candidate's first (`Ġyes`), so
    the joint tokens do not start with the prompt's. The split moves back one token and the candidate takes the
    merged token; `drop` tells the scorer to remove the prompt's last token."""
    tok = tokenizer(kind)
    prompt = LLAVA_PROMPT + " "
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    joint = tok(prompt + "yes", add_special_tokens=False)["input_ids"]
    assert joint[: len(prompt_ids)] != prompt_ids  # the case is real on this tokenizer
    (got,) = candidate_tokens(tok, prompt, ["yes"])
    assert got.drop == 1
    assert tokens(tok, got.ids) == [WORD_START[kind] + "yes"]
    assert prompt_ids[: -got.drop] + list(got.ids) == joint


def test_bad_candidates_are_named():
    tok = tokenizer("byte_bpe")
    with pytest.raises(ValueError, match="candidate '  ' has no tokens"):
        candidate_tokens(tok, LLAVA_PROMPT, ["  "])
    with pytest.raises(ValueError, match="candidate 3 has to be a string"):
        candidate_tokens(tok, LLAVA_PROMPT, [3])
    with pytest.raises(ValueError, match="rendered_prompt"):
        candidate_tokens(tok, None, ["yes"])


class _WholeWords(LogitsProcessor):
    """Greedy generation restricted to whole-word tokens (canonical on their own), the first one with or without a
    word-start marker as the separator rule asks: the text it writes then re-tokenizes to the same ids."""

    def __init__(self, first: list[int], rest: list[int], prompt_length: int, vocab: int):
        self.allowed = [self._mask(first, vocab), self._mask(rest, vocab)]
        self.prompt_length = prompt_length

    @staticmethod
    def _mask(ids, vocab):
        mask = torch.ones(vocab, dtype=torch.bool)
        mask[ids] = False
        return mask

    def __call__(self, input_ids, scores):
        mask = self.allowed[0 if input_ids.shape[1] == self.prompt_length else 1]
        return scores.masked_fill(mask[: scores.shape[-1]], -float("inf"))


def _whole_words(tok, marker: str | None) -> list[int]:
    out = []
    for token, i in tok.get_vocab().items():
        word = token[1:] if marker and token.startswith(marker) else token
        if (marker is None) == (word != token) or not word.isalpha() or not word.isascii():
            continue
        if tok((" " if marker else "") + word, add_special_tokens=False)["input_ids"][-1:] == [i]:
            out.append(i)
    return out


@torch.no_grad()
@pytest.mark.parametrize("family", tm.FAMILIES)
def test_score_equals_log_prob_of_the_ids_greedy_generation_emits(family):
    model, processor = tm.build(family)
    tok = processor.tokenizer
    crg = CRG(model, processor, alpha=0.0)
    image, prompt = tm.image(0), "what is in the box ?"
    reference = crg.prepare([image], [prompt], [None] if crg.mode == "whole" else [[(2, 2, 12, 10)]]).reference
    rendered = crg.rendered_prompt(prompt)
    marker = WORD_START[tm.tokenizer_kind(family)]
    first = _whole_words(tok, marker if candidate_separator(rendered, "x", tok.all_special_tokens) else None)
    rest = _whole_words(tok, marker)
    assert first and rest
    length = reference["input_ids"].shape[1]
    restrict = _WholeWords(first, rest, length, model.config.get_text_config().vocab_size)
    out = model.generate(
        **reference,
        max_new_tokens=3,
        do_sample=False,
        logits_processor=[restrict],
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
    )
    emitted = out.sequences[0, length:].tolist()
    text = tok.decode(emitted, skip_special_tokens=True).strip()
    (got,) = candidate_tokens(processor, rendered, [text])
    assert list(got.ids) == emitted, (text, tokens(tok, got.ids), tokens(tok, emitted))
    logprob = sum(torch.log_softmax(step[0].float(), -1)[t] for step, t in zip(out.logits, emitted, strict=True))
    score = crg.score(image, prompt, [text], [(2, 2, 12, 10)])[0]
    assert score == pytest.approx(float(logprob), abs=1e-4)


@torch.no_grad()
# PaliGemma is left out: its prompt ends in the newline its processor appends, so a trailing space cannot merge.
@pytest.mark.parametrize("family", [f for f in tm.FAMILIES if f != "paligemma"])
def test_boundary_merge_is_scored_after_the_shortened_prompt(family):
    """CRG on a prompt whose text ends in a space: the candidate's merged first token is scored after the prompt
    without its last token, and equals two full forwards over exactly the joint ids."""
    from tests.crg import brute

    model, processor = tm.build(family)
    crg = CRG(model, processor, alpha=1.0)
    image, regions = tm.image(0), [(2, 2, 12, 10)]
    crg.prompt_text = lambda prompt: CRG.prompt_text(crg, prompt) + " "  # a template whose prompt ends in a space
    prepared = crg.prepare([image], ["what is in the box ?"], [regions])
    (got,) = crg._tokens(prepared, 0, "what is in the box ?", ["a red cup"])
    assert got.drop == 1
    ids = torch.cat([prepared.reference["input_ids"][:, :-1], torch.tensor([got.ids])], dim=1)
    shape = prepared.reference["input_ids"].shape

    def short(batch):  # the prompt without its last token: every (B, T) input loses its last column
        return {k: (v[:, :-1] if torch.is_tensor(v) and v.shape == shape else v) for k, v in batch.items()}

    n = len(got.ids)
    ref = torch.log_softmax(brute.full_logits(model, short(prepared.reference), ids)[0, -n - 1 : -1], -1)
    con = torch.log_softmax(brute.full_logits(model, short(prepared.contrast), ids)[0, -n - 1 : -1], -1)
    guided = torch.log_softmax(2 * ref - con, -1)[torch.arange(n), torch.tensor(got.ids)].sum()
    score = crg.score(image, "what is in the box ?", ["a red cup"], regions)[0]
    assert score == pytest.approx(float(guided), abs=1e-4)


@pytest.mark.parametrize("family", [f for f in tm.FAMILIES if f != "paligemma"])  # PaliGemma has no chat template
@pytest.mark.parametrize("space_after_prompt", [False, True])
def test_collator_labels_follow_the_rule(family, space_after_prompt):
    """CAL's labels on an answer are the rule's candidate tokens (then the end-of-turn tokens), also when the
    generation prompt ends in a space that merges into the answer's first token."""
    import copy

    from vcontrast.cal import ConversationCollator

    _, processor = tm.build(family)
    processor = copy.deepcopy(processor)
    if space_after_prompt:  # the generation prompt ends in a space; the assistant turn writes it before the answer
        processor.chat_template = processor.chat_template.replace("ASSISTANT:", "ASSISTANT: ").replace(
            "Assistant:", "Assistant: "
        )
        if "ASSISTANT:" not in processor.chat_template and "Assistant:" not in processor.chat_template:
            pytest.skip("this family's generation prompt ends in a newline or a special token")
    answer = "a red cup"
    example = {"image": tm.image(0), "prompt": "what is in the box ?", "answer": answer}
    batch = ConversationCollator(processor)([example])
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the box ?"}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    (expected,) = candidate_tokens(processor, rendered, [answer])
    assert expected.drop == (1 if space_after_prompt else 0)
    assert labelled[: len(expected.ids)] == list(expected.ids)
    end_of_turn = processor.tokenizer.decode(labelled[len(expected.ids) :]).strip()
    assert end_of_turn in ("</s>", "<eos>", "<|im_end|>", "<end_of_utterance>", "<end_of_turn>", "<turn|>")


@pytest.mark.parametrize(("family", "marker"), [("idefics3", "Ġ"), ("llava", "▁"), ("vipllava", "▁")])
def test_crg_scores_the_word_start_token_after_a_colon(family, marker):
    """`Assistant:` / `ASSISTANT:` / `###Assistant:` then "yes": CRG scores (and `match` asks for) `Ġyes` / `▁yes`."""
    model, processor = tm.build(family)
    crg = CRG(model, processor)
    prepared = crg.prepare([tm.image(0)], ["is it red ?"], [[(2, 2, 12, 10)]])
    assert crg.rendered_prompt("is it red ?").endswith(":")
    (yes,) = crg._tokens(prepared, 0, "is it red ?", ["yes"])
    assert tokens(processor.tokenizer, yes.ids) == [marker + "yes"] and yes.drop == 0


@torch.no_grad()
@pytest.mark.parametrize("family", tm.FAMILIES)
def test_short_prompts_and_a_processor_suffix_the_adapter_does_not_know(family, monkeypatch):
    """A two-word prompt (the image expansion close to the end) scores like brute force on every family; a processor
    that appends text the adapter does not know about is refused rather than scored at the wrong split."""
    model, processor = tm.build(family)
    crg = CRG(model, processor, alpha=0.0)
    image, regions, prompt = tm.image(0), [(2, 2, 12, 10)], "red ?"
    score = crg.score(image, prompt, ["yes"], regions)[0]
    reference = crg.prepare([image], [prompt], [regions]).reference
    (yes,) = crg._tokens(crg.prepare([image], [prompt], [regions]), 0, prompt, ["yes"])
    logits = model(**reference, position_ids=crg.adapter.position_ids(reference)).logits[0, -1]
    assert score == pytest.approx(float(torch.log_softmax(logits.float(), -1)[yes.ids[0]]), abs=1e-4)
    monkeypatch.setattr(type(crg.adapter), "text_after_prompt", crg.adapter.text_after_prompt + " Answer:")
    with pytest.raises(ValueError, match="candidate tokens cannot be placed after the prompt"):
        crg.score(image, prompt, ["yes"], regions)
