"""CRG generation against brute force, for every model family: greedy (batch 1 and 2, left-padded), beam search,
alpha = 0, the contrast stream's dependence on the regions, and the hook's cleanup."""

import functools
import gc
import math

import pytest
import torch
from transformers import LogitsProcessorList

from tests import tiny_models as tm
from tests.crg import brute
from vcontrast.crg import CRG, CRGLogitsProcessor, two_stream_generate
from vcontrast.crg import processor as crg_processor
from vcontrast.crg.processor import beam_origin
from vcontrast.models import get_adapter

PROMPTS = ["what is in the box ?", "which colour is the cup left of the plate ?"]
REGIONS = [[(2, 2, 12, 10)], [(0, 0, 8, 20), (14, 4, 24, 16)]]
OTHER_REGIONS = [[(12, 10, 24, 20)], [(8, 0, 16, 10)]]
NEW_TOKENS = 3


def images(batch):
    # Different sizes, so that families with size-dependent token counts (LLaVA-NeXT, Qwen2-VL) get left padding.
    return [tm.image(0), tm.image(1, size=(28, 16))][:batch]


def prepared(family, batch, regions=REGIONS, alpha=1.0):
    model, processor = tm.build(family)
    crg = CRG(model, processor, alpha=alpha)
    inputs = crg.prepare(images(batch), PROMPTS[:batch], regions[:batch])
    return model, processor, inputs.reference, inputs.contrast


def special_tokens(model, processor):
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    return eos, processor.tokenizer.pad_token_id


def image_token(model):
    return get_adapter(model).image_token_id


def processor_generate(model, reference, contrast, alpha=1.0, plausibility_beta=None, **kwargs):
    with CRGLogitsProcessor(model, contrast, alpha=alpha, plausibility_beta=plausibility_beta) as crg:
        return model.generate(**reference, logits_processor=LogitsProcessorList([crg]), **kwargs)


@pytest.fixture(params=tm.FAMILIES)
def family(request):
    return request.param


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_matches_brute_force(family, batch):
    model, processor, reference, contrast = prepared(family, batch)
    if batch == 2:
        assert (reference["attention_mask"] == 0).any() or family not in ("llava_next", "qwen2_vl"), "no padding"
    eos, pad = special_tokens(model, processor)
    banned = [image_token(model)]
    expected = brute.greedy(model, reference, contrast, 1.0, NEW_TOKENS, eos, pad, banned)
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": pad, "suppress_tokens": banned}
    assert torch.equal(processor_generate(model, reference, contrast, **kwargs), expected)
    assert torch.equal(two_stream_generate(model, reference, contrast, 1.0, **kwargs), expected)
    # and the guidance matters here: plain greedy differs somewhere (else this test could not catch a no-op)
    if family == "llava":
        assert not torch.equal(model.generate(**reference, **kwargs), expected)


def test_beam_search_matches_brute_force(family, monkeypatch):
    model, processor, reference, contrast = prepared(family, 2)
    moved = []  # make sure the beams do get reordered, so that the contrast cache has to follow them

    def spy(previous, prefix, group_size):
        origin = beam_origin(previous, prefix, group_size)
        moved.append(origin is not None and not torch.equal(origin, torch.arange(len(origin))))
        return origin

    monkeypatch.setattr(crg_processor, "beam_origin", spy)
    eos, pad = special_tokens(model, processor)
    steps, beams = 3, 3
    banned = [eos, image_token(model)]
    expected, expected_scores = brute.beam_search(model, reference, contrast, 1.0, beams, steps, banned)
    out = processor_generate(
        model,
        reference,
        contrast,
        num_beams=beams,
        max_new_tokens=steps,
        do_sample=False,
        suppress_tokens=banned,
        pad_token_id=pad,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, expected)
    # generate sums the processor's per-step scores and divides by length ** length_penalty (1.0 by default): with
    # the guided distribution's log-probs, that is the summed guided log-likelihood per token, at most 0
    torch.testing.assert_close(out.sequences_scores, expected_scores / steps, atol=1e-4, rtol=1e-4)
    assert bool((out.sequences_scores <= 0).all())
    assert any(moved)


def test_alpha_zero_is_plain_generate(family):
    model, processor, reference, contrast = prepared(family, 2)
    _, pad = special_tokens(model, processor)
    for kwargs in ({"do_sample": False}, {"num_beams": 2, "do_sample": False}):
        kwargs.update(max_new_tokens=NEW_TOKENS, pad_token_id=pad)
        plain = model.generate(**reference, **kwargs)
        assert torch.equal(processor_generate(model, reference, contrast, alpha=0.0, **kwargs), plain)
    plain = model.generate(**reference, max_new_tokens=NEW_TOKENS, pad_token_id=pad)
    assert torch.equal(two_stream_generate(model, reference, contrast, 0.0, max_new_tokens=NEW_TOKENS), plain)


def test_contrast_stream_sees_the_masked_image_and_depends_on_regions(family, monkeypatch):
    """The official CRG code's bug (its contrast stream never gets the masked image or the prompt) made impossible:
    the image features of the contrast stream come from the contrast pixels, and the guided scores change with the
    regions and equal brute force."""
    model, _, reference, contrast = prepared(family, 1)
    _, _, _, other = prepared(family, 1, regions=OTHER_REGIONS)
    backbone = model.model
    seen = []
    original = backbone.get_image_features

    @functools.wraps(original)  # generate reads the signature to pick the encoder's arguments
    def spy(pixel_values, *args, **kwargs):
        seen.append(pixel_values.clone())
        return original(pixel_values, *args, **kwargs)

    monkeypatch.setattr(backbone, "get_image_features", spy)
    kwargs = {"max_new_tokens": 2, "do_sample": False, "output_scores": True, "return_dict_in_generate": True}
    out = processor_generate(model, reference, contrast, **kwargs)
    assert len(seen) == 2  # generate's reference encoding, then the contrast prefill
    torch.testing.assert_close(seen[0], reference["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(seen[1], contrast["pixel_values"], rtol=0, atol=0)
    assert not torch.equal(contrast["pixel_values"], reference["pixel_values"])

    ids = reference["input_ids"]
    expected = brute.guided_logprobs(
        brute.full_logits(model, reference, ids)[:, -1], brute.full_logits(model, contrast, ids)[:, -1], 1.0
    )
    torch.testing.assert_close(out.scores[0], expected, atol=1e-4, rtol=1e-4)
    out_other = processor_generate(model, reference, other, **kwargs)
    assert (out_other.scores[0] - out.scores[0]).abs().max() > 1e-2


def test_hook_removed_after_generation():
    model, _, reference, contrast = prepared("llava", 1)
    before = len(model._forward_pre_hooks)
    processor_generate(model, reference, contrast, max_new_tokens=2)
    assert len(model._forward_pre_hooks) == before
    # without a context manager: dropping the processor removes the hook too
    crg = CRGLogitsProcessor(model, contrast)
    assert len(model._forward_pre_hooks) == before + 1
    first = model.generate(**reference, logits_processor=LogitsProcessorList([crg]), max_new_tokens=3)
    second = model.generate(**reference, logits_processor=LogitsProcessorList([crg]), max_new_tokens=3)
    assert torch.equal(first, second)  # one processor serves several generate calls
    del crg
    gc.collect()
    assert len(model._forward_pre_hooks) == before


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "paligemma"])
def test_sampling_paths_agree(family):
    model, processor, reference, contrast = prepared(family, 2)
    _, pad = special_tokens(model, processor)
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": True, "top_k": 0, "num_return_sequences": 2}
    torch.manual_seed(3)
    sampled = processor_generate(model, reference, contrast, pad_token_id=pad, **kwargs)
    torch.manual_seed(3)
    batched = two_stream_generate(model, reference, contrast, 1.0, pad_token_id=pad, **kwargs)
    assert sampled.shape[0] == 4
    assert torch.equal(sampled, batched)


def test_generate_returns_text_for_every_decoding_mode():
    model, processor = tm.build("llava")
    crg = CRG(model, processor)
    image, regions = tm.image(0), REGIONS[0]
    greedy = crg.generate(image, PROMPTS[0], regions, max_new_tokens=NEW_TOKENS)
    assert isinstance(greedy, str) and greedy
    assert crg.generate(image, PROMPTS[0], regions, implementation="processor", max_new_tokens=NEW_TOKENS) == greedy
    assert isinstance(crg.generate(image, PROMPTS[0], regions, do_sample=True, max_new_tokens=NEW_TOKENS), str)
    assert isinstance(crg.generate(image, PROMPTS[0], regions, num_beams=2, max_new_tokens=NEW_TOKENS), str)
    answers = crg.generate_batch(images(2), PROMPTS, REGIONS, max_new_tokens=NEW_TOKENS)
    assert answers[0] == greedy


@pytest.mark.parametrize(
    "kwargs",
    [
        {"penalty_alpha": 0.6, "top_k": 4},  # contrastive search
        {"prompt_lookup_num_tokens": 2},  # assisted (prompt lookup)
        {"num_beams": 4, "num_beam_groups": 2},  # group beam search
        {"num_beams": 2, "force_words_ids": [[5]]},  # constrained beam search
        {"dola_layers": "low"},
        {"use_cache": False},
        {"guidance_scale": 2.0},
    ],
)
def test_unsupported_decoding_modes_raise(kwargs):
    model, processor = tm.build("llava")
    crg = CRG(model, processor)
    with pytest.raises(ValueError, match="not supported|use_cache|guidance_scale"):
        crg.generate(tm.image(0), PROMPTS[0], REGIONS[0], max_new_tokens=2, **kwargs)


def test_processor_input_errors():
    model, processor, _, contrast = prepared("llava", 1)
    _, _, other_reference, _ = prepared("llava", 2)
    with pytest.raises(ValueError, match="alpha"):
        CRGLogitsProcessor(model, contrast, alpha=-1)
    with pytest.raises(ValueError, match="plausibility_beta"):
        CRGLogitsProcessor(model, contrast, plausibility_beta=1.5)
    no_pixels = {k: v for k, v in contrast.items() if k != "pixel_values"}
    with pytest.raises(ValueError, match="pixel_values"):
        CRGLogitsProcessor(model, no_pixels)
    with CRGLogitsProcessor(model, contrast) as crg, pytest.raises(ValueError, match="input_ids"):
        model.generate(**other_reference, logits_processor=LogitsProcessorList([crg]), max_new_tokens=2)
    with pytest.raises(ValueError, match="beam"):
        CRG(model, processor).generate(tm.image(0), PROMPTS[0], REGIONS[0], implementation="batched", num_beams=2)


def test_generate_processors_act_on_guided_scores_on_every_path():
    """Repetition penalty and temperature see the guided distribution's log-probs, in the processor path as in the
    batched one."""
    from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

    model, processor, reference, contrast = prepared("llava", 1)
    _, pad = special_tokens(model, processor)
    ids = reference["input_ids"]
    guided = brute.guided_logprobs(
        brute.full_logits(model, reference, ids)[:, -1], brute.full_logits(model, contrast, ids)[:, -1], 1.0
    )
    expected = TemperatureLogitsWarper(0.7)(ids, RepetitionPenaltyLogitsProcessor(1.5)(ids, guided.clone()))
    kwargs = {"max_new_tokens": 1, "repetition_penalty": 1.5, "temperature": 0.7, "do_sample": True, "top_k": 0}
    kwargs |= {"output_scores": True, "return_dict_in_generate": True, "pad_token_id": pad}
    by_processor = processor_generate(model, reference, contrast, **kwargs).scores[0]
    batched = two_stream_generate(model, reference, contrast, 1.0, **kwargs).scores[0]
    torch.testing.assert_close(by_processor, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched, expected, atol=1e-4, rtol=1e-4)
    # the processor runs first even when used without a context manager, and the model is left as it was
    crg = CRGLogitsProcessor(model, contrast)
    out = model.generate(**reference, logits_processor=LogitsProcessorList([crg]), **kwargs)
    torch.testing.assert_close(out.scores[0], expected, atol=1e-4, rtol=1e-4)
    crg.close()
    assert "_get_logits_processor" not in vars(model)


def test_plausibility_cutoff_is_off_at_alpha_zero_on_every_path():
    model, processor, reference, contrast = prepared("llava", 2)
    _, pad = special_tokens(model, processor)
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": pad}
    plain = model.generate(**reference, **kwargs)
    cut = {"alpha": 0.0, "plausibility_beta": 1.0}
    assert torch.equal(processor_generate(model, reference, contrast, **cut, **kwargs), plain)
    assert torch.equal(two_stream_generate(model, reference, contrast, 0.0, 1.0, **kwargs), plain)
    crg = CRG(model, processor, alpha=0.0, plausibility_beta=1.0)
    plain_crg = CRG(model, processor, alpha=0.0)
    image, prompt = tm.image(0), "what is in the box ?"
    for implementation in ("batched", "processor"):
        assert crg.generate(image, prompt, REGIONS[0], implementation=implementation, max_new_tokens=3) == (
            plain_crg.generate(image, prompt, REGIONS[0], max_new_tokens=3)
        )
    scores = crg.score(image, prompt, ["a red cup", "blue"], REGIONS[0])
    assert all(math.isfinite(s) for s in scores)  # beta = 1 would leave only the argmax token if it applied
    assert scores == pytest.approx(plain_crg.score(image, prompt, ["a red cup", "blue"], REGIONS[0]), abs=1e-5)


def test_live_processor_leaves_generate_calls_without_it_alone():
    """A processor that is alive (not closed) changes nothing in a generate call that does not pass it: neither the
    processor list nor the tokens, and its hook records none of that call's forwards."""
    model, processor, reference, contrast = prepared("llava", 1)
    _, pad = special_tokens(model, processor)
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": pad}
    scored = {"output_scores": True, "return_dict_in_generate": True}
    before = model.generate(**reference, **kwargs, **scored)
    crg = CRGLogitsProcessor(model, contrast)
    guided = model.generate(**reference, logits_processor=LogitsProcessorList([crg]), **kwargs)
    assert not torch.equal(guided, before.sequences)  # the processor does change this generation
    after = model.generate(**reference, **kwargs, **scored)
    assert torch.equal(after.sequences, before.sequences)
    for step_after, step_before in zip(after.scores, before.scores, strict=True):
        torch.testing.assert_close(step_after, step_before, rtol=0, atol=0)
    assert crg._captured is None and crg._cache is None  # nothing recorded or kept from the plain call
    crg.close()


def test_two_live_processors_each_give_their_own_brute_force_result():
    model, processor, reference, contrast = prepared("llava", 2)
    _, _, _, other = prepared("llava", 2, regions=OTHER_REGIONS)
    eos, pad = special_tokens(model, processor)
    banned = [image_token(model)]
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": pad, "suppress_tokens": banned}
    first, second = CRGLogitsProcessor(model, contrast), CRGLogitsProcessor(model, other)  # both alive throughout
    for crg, inputs in ((first, contrast), (second, other), (first, contrast)):
        out = model.generate(**reference, logits_processor=LogitsProcessorList([crg]), **kwargs)
        assert torch.equal(out, brute.greedy(model, reference, inputs, 1.0, NEW_TOKENS, eos, pad, banned))
    assert not torch.equal(
        brute.greedy(model, reference, contrast, 1.0, NEW_TOKENS, eos, pad, banned),
        brute.greedy(model, reference, other, 1.0, NEW_TOKENS, eos, pad, banned),
    )  # the two regions do lead to different tokens, so a mix-up would show
    first.close()
    second.close()
    assert "_get_logits_processor" not in vars(model)


def test_beam_search_maximises_the_renormalised_guided_score():
    """The processor returns log_softmax(g_t): beam search's summed score (no length penalty) is `CRG.score`'s
    default score of the generated tokens, never above 0, and each step's scores are log-probabilities."""
    from vcontrast.crg.decode import stack_streams
    from vcontrast.crg.scoring import ScoreJob, score_jobs

    model, processor, reference, contrast = prepared("llava", 1)
    eos, pad = special_tokens(model, processor)
    steps = 4
    kwargs = {"max_new_tokens": steps, "do_sample": False, "pad_token_id": pad, "suppress_tokens": [eos]}
    kwargs |= {"output_scores": True, "return_dict_in_generate": True}
    out = processor_generate(model, reference, contrast, num_beams=3, length_penalty=0.0, **kwargs)
    prompt_length = reference["input_ids"].shape[1]
    tokens = tuple(out.sequences[0, prompt_length:].tolist())
    [score] = score_jobs(model, stack_streams(reference, contrast), [ScoreJob(0, (1,), tokens)], 1.0)
    torch.testing.assert_close(out.sequences_scores[0], score.sum(), atol=1e-4, rtol=1e-4)
    assert float(out.sequences_scores[0]) <= 0
    greedy = {key: value for key, value in kwargs.items() if key != "suppress_tokens"}  # which removes some mass
    for step in processor_generate(model, reference, contrast, **greedy).scores:  # log-probs at every step
        torch.testing.assert_close(torch.logsumexp(step, -1), torch.zeros(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("option", "kwargs"),
    [
        ("cache_implementation", {"cache_implementation": "static"}),
        ("cache_implementation", {"cache_implementation": "static", "num_beams": 2}),
        ("prefill_chunk_size", {"prefill_chunk_size": 8}),
        ("prefill_chunk_size", {"prefill_chunk_size": 8, "num_beams": 2}),
    ],
)
def test_static_cache_and_chunked_prefill_are_refused(option, kwargs):
    model, processor, reference, contrast = prepared("llava", 1)
    crg = CRG(model, processor)
    for implementation in ("auto", "processor"):
        with pytest.raises(ValueError, match=option):
            crg.generate(tm.image(0), PROMPTS[0], REGIONS[0], implementation=implementation, **kwargs)
    with pytest.raises(ValueError, match=option):
        processor_generate(model, reference, contrast, max_new_tokens=2, **kwargs)
    # plain generate (no processor passed) is not affected by a live processor's refusal
    with CRGLogitsProcessor(model, contrast):
        model.generate(**reference, max_new_tokens=2, pad_token_id=processor.tokenizer.pad_token_id, **kwargs)


def test_static_cache_passed_in_is_refused():
    from transformers import StaticCache

    from vcontrast._compat import cache_kwargs

    model, _, reference, contrast = prepared("llava", 1)
    cache = StaticCache(config=model.config.get_text_config(), max_cache_len=reference["input_ids"].shape[1] + 4)
    with pytest.raises(ValueError, match="static cache"):
        processor_generate(model, reference, contrast, max_new_tokens=2, **cache_kwargs(cache))
