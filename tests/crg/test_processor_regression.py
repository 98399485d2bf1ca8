"""Regressions of the CRG contrast stream that once went unnoticed.

- transformers 5.24 renamed the forward's cache argument; `CRGLogitsProcessor` then saw no cache, took every decoding
  step for a prefill, and (with one new token) returned wrong guided scores without an error. A spy on the model's
  forward pins what the contrast stream receives: one prefill per prompt, then one new token per step on its own
  cache, never the reference cache.
- Every guidance test used alpha 1, where `2 * lp_ref - lp_con` passes too. Here alpha is 0.3 and 2.5, and the guided
  scores themselves (not only the argmax) are compared with brute force.
"""

import pytest
import torch
from transformers import LogitsProcessorList

from tests import tiny_models as tm
from tests.crg import brute
from vcontrast._compat import cache_from_kwargs
from vcontrast.crg import CRG, CRGLogitsProcessor, two_stream_generate
from vcontrast.crg.decode import stack_streams
from vcontrast.crg.scoring import ScoreJob, score_jobs
from vcontrast.models import get_adapter

PROMPTS = ["what is in the box ?", "which colour is the cup left of the plate ?"]
REGIONS = [[(2, 2, 12, 10)], [(0, 0, 8, 20), (14, 4, 24, 16)]]
# M-RoPE (qwen2_vl) builds its positions in generate, outside the forward: the path that broke the decode call.
FAMILIES = ("llava", "qwen2_vl")


def prepared(family, batch=2, seed=0):
    model, processor = tm.build(family, seed=seed)
    crg = CRG(model, processor)
    images = [tm.image(0), tm.image(1, size=(28, 16))][:batch]
    inputs = crg.prepare(images, PROMPTS[:batch], REGIONS[:batch])
    return model, processor, inputs.reference, inputs.contrast


def generate_kwargs(model, processor, new_tokens):
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    # no image placeholder (a full forward cannot re-run it) and no EOS (every step runs, the spy sees them all)
    banned = [get_adapter(model).image_token_id, *eos]
    return {
        "max_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": processor.tokenizer.pad_token_id,
        "suppress_tokens": banned,
    }


class ForwardSpy:
    """Records, for every forward of `model`, which stream ran it, its input length and rows, and its cache."""

    def __init__(self, model, processor: CRGLogitsProcessor):
        self.calls = []
        self._processor = processor
        self._handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        cache = cache_from_kwargs(kwargs)
        self.calls.append(
            {
                "contrast": self._processor._in_contrast,
                "rows": kwargs["input_ids"].shape[0],
                "length": kwargs["input_ids"].shape[1],
                "cache": cache,
                "cached": 0 if cache is None else cache.get_seq_length(),
            }
        )

    def remove(self):
        self._handle.remove()

    def stream(self, contrast: bool):
        return [call for call in self.calls if call["contrast"] == contrast]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_beams", [1, 2])
def test_contrast_stream_prefills_once_then_steps_on_its_own_cache(family, num_beams):
    model, processor, reference, contrast = prepared(family)
    new_tokens = 5
    prompt_length = reference["input_ids"].shape[1]
    with CRGLogitsProcessor(model, contrast, alpha=1.0) as crg:
        spy = ForwardSpy(get_adapter(model).model, crg)
        try:
            model.generate(
                **reference,
                logits_processor=LogitsProcessorList([crg]),
                num_beams=num_beams,
                **generate_kwargs(model, processor, new_tokens),
            )
        finally:
            spy.remove()
    ref, con = spy.stream(False), spy.stream(True)
    assert len(ref) == new_tokens and len(con) == new_tokens
    prefill, *steps = con
    # exactly one prefill, of each prompt once (not once per beam), over the whole prompt, on a fresh cache
    assert (prefill["rows"], prefill["length"], prefill["cached"]) == (2, prompt_length, 0)
    assert [call["length"] for call in steps] == [1] * (new_tokens - 1)
    assert all(call["rows"] == 2 * num_beams for call in steps)
    # each step extends the contrast cache by one token: no step is treated as a prefill
    assert [call["cached"] for call in steps] == [prompt_length + i for i in range(new_tokens - 1)]
    reference_caches = {id(call["cache"]) for call in ref if call["cache"] is not None}
    assert all(id(call["cache"]) not in reference_caches for call in steps)
    assert len({id(call["cache"]) for call in steps}) == 1  # one cache of its own, kept across steps


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("alpha", [0.3, 2.5])
def test_guided_scores_equal_brute_force_at_alpha(family, alpha):
    """The guided scores of every step, on both decoding paths, equal brute force (both full forwards re-run).
    No `suppress_tokens` here: where generate's own processors act differs between the paths (see docs/crg.md)."""
    # seed 1: with seed 0, qwen2_vl's first guided token at alpha 0.3 is its image placeholder (see below)
    model, processor, reference, contrast = prepared(family, seed=1)
    kwargs = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id}
    scored = {"output_scores": True, "return_dict_in_generate": True}
    with CRGLogitsProcessor(model, contrast, alpha=alpha) as crg:
        out = model.generate(**reference, logits_processor=LogitsProcessorList([crg]), **scored, **kwargs)
    two_stream = two_stream_generate(model, reference, contrast, alpha, **scored, **kwargs)
    assert torch.equal(out.sequences, two_stream.sequences)
    prompt_length = reference["input_ids"].shape[1]
    # A full forward cannot re-run a generated image placeholder: compare the steps before one appears (>= 2).
    generated = out.sequences[:, prompt_length:]
    placeholder = (generated == get_adapter(model).image_token_id).any(0)
    steps = int(placeholder.int().argmax()) + 1 if placeholder.any() else len(out.scores)
    assert steps >= 2
    for step, (scores, other) in enumerate(zip(out.scores[:steps], two_stream.scores[:steps], strict=True)):
        ids = out.sequences[:, : prompt_length + step]
        ref, con = brute.full_logits(model, reference, ids)[:, -1], brute.full_logits(model, contrast, ids)[:, -1]
        # the guided distribution's log-probs, log_softmax(g), on both paths
        expected = brute.guided_logprobs(ref, con, alpha)
        torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(other, expected, atol=1e-4, rtol=1e-4)
        # and alpha matters: the alpha-1 formula is measurably different here
        assert (brute.guided_logprobs(ref, con, 1.0) - expected).abs().max() > 0.1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("alpha", [0.3, 2.5])
@pytest.mark.parametrize("normalize", [True, False])
def test_prefix_cached_scores_equal_brute_force_at_alpha(family, alpha, normalize):
    model, _, reference, contrast = prepared(family, batch=1)
    tokens = reference["input_ids"][0, -4:].tolist()  # any in-vocabulary ids will do; these are not image tokens
    assert get_adapter(model).image_token_id not in tokens
    prefix = stack_streams(reference, contrast)  # row 0: reference, row 1: contrast
    score = "normalized" if normalize else "guided"
    [scores] = score_jobs(model, prefix, [ScoreJob(0, (1,), tuple(tokens))], alpha=alpha, score=score)
    expected = brute.candidate_scores(model, reference, contrast, tokens, alpha, normalize)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
