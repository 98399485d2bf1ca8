"""Family-specific behaviour the shared parity suite (tests/models/test_contrast.py, tests/crg, tests/cal) does not
show on its own: that each tiny model really exercises its family's quirk, and the limits adapters refuse."""

import copy

import pytest
import torch

from tests import tiny_models as tm
from tests.models.test_contrast import brute_force, make_batch
from vcontrast.conditions import NoImage
from vcontrast.contrast import ATTENTION_MASK, gold_token_logits
from vcontrast.models import get_adapter


@torch.no_grad()
def test_every_family_builds_with_its_released_tokenizer_kind():
    for family in tm.FAMILIES:
        model, _ = tm.build(family)
        assert tm.tokenizer_kind(family) in tm.TOKENIZER_KINDS
        adapter = get_adapter(model)
        assert model.config.model_type in adapter.model_types
        assert sum(p.numel() for p in model.parameters()) < 150_000  # tiny: the suite runs every family


@torch.no_grad()
def test_qwen3_vl_deepstack_is_exercised_and_left_out_without_the_image():
    """The tiny Qwen3-VL injects deepstack features (zeroing them changes the reference logits), and the no-image
    pass equals the attention-mask form, in which the injected image positions are masked out."""
    model, _, batch, labels = make_batch("qwen3_vl")
    reference = gold_token_logits(model, batch, labels).logits
    muted = copy.deepcopy(model)
    for merger in muted.model.visual.deepstack_merger_list:
        torch.nn.init.zeros_(merger.linear_fc2.weight)
        torch.nn.init.zeros_(merger.linear_fc2.bias)
    assert not torch.allclose(gold_token_logits(muted, batch, labels).logits, reference, atol=1e-4)
    # without the image, deepstack has nothing to inject: the muted and the full model agree
    torch.testing.assert_close(
        gold_token_logits(muted, batch, labels, NoImage()).logits,
        gold_token_logits(model, batch, labels, NoImage()).logits,
    )


@torch.no_grad()
def test_gemma3_image_tokens_attend_bidirectionally_and_no_softcap_is_applied():
    model, _, batch, labels = make_batch("gemma3")
    assert model.config.text_config.final_logit_softcapping is not None  # set, and ignored by the model
    assert get_adapter(model).output_head()[1] is None
    causal = {k: v for k, v in batch.items() if k != "token_type_ids"}
    assert not torch.allclose(
        model(**batch).logits, model(**causal).logits, atol=1e-4
    )  # the token types change the attention, so the suite's parity covers the bidirectional block
    logit, _ = brute_force(model, batch, labels)
    torch.testing.assert_close(gold_token_logits(model, batch, labels).logits, logit, atol=1e-5, rtol=1e-5)


@tm.requires("gemma4")
@torch.no_grad()
def test_gemma4_image_tokens_attend_bidirectionally_and_the_softcap_is_applied():
    model, _, batch, labels = make_batch("gemma4")
    assert get_adapter(model).output_head()[1] == model.config.text_config.final_logit_softcapping == 30.0
    causal = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    assert not torch.allclose(model(**batch).logits, model(**causal).logits, atol=1e-4)
    assert model(**batch).logits.abs().max() < 30.0  # capped: the soft-cap is in play
    logit, _ = brute_force(model, batch, labels)
    torch.testing.assert_close(gold_token_logits(model, batch, labels).logits, logit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gemma3", pytest.param("gemma4", marks=tm.requires("gemma4")), "mistral3"])
def test_no_image_pass_refuses_sequences_longer_than_the_sliding_window(family):
    model, _, batch, labels = make_batch(family)
    short_window = copy.deepcopy(model)
    short_window.config.text_config.sliding_window = 8
    name = type(model).__name__
    with pytest.raises(ValueError, match=rf"longer than {name}'s sliding window \(8\).*attention_mask"):
        gold_token_logits(short_window, batch, labels, NoImage())
    gold_token_logits(short_window, batch, labels, ATTENTION_MASK)  # the exact form still runs


@torch.no_grad()
def test_mistral3_break_and_end_tokens_belong_to_the_image_block():
    model, processor, batch, labels = make_batch("mistral3")
    tok = processor.tokenizer
    ids = batch["input_ids"]
    image = ids == tok.convert_tokens_to_ids("[IMG]")
    markers = (ids == tok.convert_tokens_to_ids("[IMG_BREAK]")) | (ids == tok.convert_tokens_to_ids("[IMG_END]"))
    assert markers.sum(-1).tolist() == [3, 3]  # three rows of merged patches per image: two breaks, one end
    assert torch.equal(get_adapter(model).image_token_mask(ids), image | markers)
    # the no-image pass drops them: it equals the attention-mask form with the markers masked too, and differs from
    # one that keeps them
    no_image = gold_token_logits(model, batch, labels, NoImage())
    logit, _ = brute_force(model, batch, labels, mask_image=True)
    torch.testing.assert_close(no_image.logits, logit, atol=1e-4, rtol=1e-4)
    keep_markers = dict(batch, attention_mask=batch["attention_mask"].masked_fill(image, 0))
    positions = get_adapter(model).position_ids(batch)
    kept = model(**keep_markers, position_ids=positions).logits
    target = labels[:, 1:]
    gold = kept[:, :-1].gather(-1, target.clamp(min=0)[..., None])[..., 0]
    mask = target != -100
    assert not torch.allclose(gold[mask], no_image.logits[:, 1:][mask], atol=1e-3)


@pytest.fixture
def without_adapter(monkeypatch):
    """Remove one family's adapter, as if vcontrast did not know it."""
    from vcontrast import models

    def remove(model_type):
        monkeypatch.setattr(models, "ADAPTERS", {k: v for k, v in models.ADAPTERS.items() if k != model_type})

    return remove


@torch.no_grad()
def test_generic_adapter_warns_once_and_passes_the_parity_checks(without_adapter, caplog):
    """A LLaVA model without its adapter goes through the generic one: warned about once, and exact."""
    import logging

    from vcontrast.models import GenericAdapter
    from vcontrast.models import generic as generic_module

    without_adapter("llava")
    generic_module._warned.discard("LlavaForConditionalGeneration")
    model, _, batch, labels = make_batch("llava")
    with caplog.at_level(logging.WARNING, logger="vcontrast.models.generic"):
        adapter = get_adapter(model)
        get_adapter(model)
    assert isinstance(adapter, GenericAdapter) and not adapter.tested
    warnings = [r.getMessage() for r in caplog.records if "untested" in r.getMessage()]
    assert len(warnings) == 1 and "LlavaForConditionalGeneration" in warnings[0] and "\n" not in warnings[0]
    logit, lp = brute_force(model, batch, labels)
    scores = gold_token_logits(model, batch, labels, logprobs=True)
    torch.testing.assert_close(scores.logits, logit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.logprobs, lp, atol=1e-5, rtol=1e-5)
    no_image = gold_token_logits(model, batch, labels, NoImage())
    torch.testing.assert_close(
        no_image.logits, brute_force(model, batch, labels, mask_image=True)[0], atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize(
    ("family", "reason"),
    [
        ("qwen2_vl", "multimodal rotary positions"),
        ("qwen3_vl", "multimodal rotary positions"),
        ("gemma3", "`token_type_ids`"),
        ("paligemma", "`token_type_ids`"),
    ],
)
def test_generic_adapter_refuses_what_it_cannot_prove_right(without_adapter, family, reason):
    without_adapter(family)
    model, _ = tm.build(family)
    name = type(model).__name__
    with pytest.raises(
        ValueError, match=rf"{name} \(model type '{family}'\) is not supported: .*{reason}.*ModelAdapter"
    ):
        get_adapter(model)


def test_word_level_tokenizer_on_request_and_unknown_kinds_named():
    _, processor = tm.build("llava", tokenizer="word")
    ids = processor.tokenizer("a red cup", add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.convert_ids_to_tokens(ids) == ["a", "red", "cup"]  # hand-readable: one word, one id
    _, realistic = tm.build("llava")
    assert realistic.tokenizer.convert_ids_to_tokens(
        realistic.tokenizer("a red cup", add_special_tokens=False)["input_ids"]
    ) == ["▁a", "▁red", "▁cup"]
    with pytest.raises(ValueError, match="tokenizer kind 'wordpiece' is not one of"):
        tm.make_tokenizer("wordpiece")


@torch.no_grad()
def test_internvl_images_of_several_tiles_batch_like_single_images():
    """`pixel_values` holds tiles, not images (here 1 + 3 rows for 2 images): CRG greedy, beam search and scores of
    the batch equal those of each image alone."""
    from vcontrast.crg import CRG

    model, processor = tm.build("internvl")
    processor = copy.deepcopy(processor)
    processor.image_processor.max_patches = 2
    crg = CRG(model, processor)
    images = [tm.image(0), tm.image(1, size=(32, 16))]
    prompts = ["what is in the box ?", "which colour is the cup ?"]
    regions = [[(2, 2, 12, 10)], [(0, 0, 8, 8)]]
    prepared = crg.prepare(images, prompts, regions)
    assert prepared.reference["pixel_values"].shape[0] == 4  # tiles: 1 + (2 crops + thumbnail)
    pad = processor.tokenizer.pad_token_id
    for kwargs in ({"do_sample": False}, {"num_beams": 2, "do_sample": False}):
        batched = crg.generate_batch(images, prompts, regions, max_new_tokens=3, pad_token_id=pad, **kwargs)
        single = [
            crg.generate(i, p, r, max_new_tokens=3, pad_token_id=pad, **kwargs)
            for i, p, r in zip(images, prompts, regions, strict=True)
        ]
        assert batched == single
    scores = crg.score_batch(images, prompts, [["a red cup", "yes"]] * 2, regions)
    for i in range(2):
        assert scores[i] == pytest.approx(crg.score(images[i], prompts[i], ["a red cup", "yes"], regions[i]), abs=1e-4)


@pytest.mark.parametrize(
    ("config_class", "expected"),
    [
        ("Idefics2Config", ("pixel_values", "pixel_attention_mask")),
        ("Cohere2VisionConfig", ("pixel_values", "image_sizes")),
        ("Glm4vConfig", "multimodal position ids"),
        ("Lfm2VlConfig", "`spatial_shapes`"),
    ],
)
def test_generic_adapter_on_real_families_without_an_adapter(config_class, expected):
    """Released transformers classes vcontrast has no adapter for, built on the meta device (no weights): accepted
    with the pixel inputs their forward takes, or refused for what the generic adapter cannot prove right."""
    import transformers as tf

    from vcontrast.models import GenericAdapter

    with torch.device("meta"):
        model = tf.AutoModelForImageTextToText.from_config(getattr(tf, config_class)())
    if isinstance(expected, tuple):
        adapter = get_adapter(model)
        assert isinstance(adapter, GenericAdapter) and adapter.pixel_keys == expected
    else:
        with pytest.raises(ValueError, match=f"is not supported: .*{expected}"):
            get_adapter(model)


def _check_reference_and_no_image(model, batch, labels):
    # The reference equals the model's own forward, the no-image pass the attention-mask form, and they differ.
    logit, _ = brute_force(model, batch, labels)
    torch.testing.assert_close(gold_token_logits(model, batch, labels).logits, logit, atol=1e-5, rtol=1e-5)
    no_image = gold_token_logits(model, batch, labels, NoImage())
    masked, _ = brute_force(model, batch, labels, mask_image=True)
    torch.testing.assert_close(no_image.logits, masked, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(no_image.logits, logit, atol=1e-4)


def _several_images_batch(family, counts, padding_side="right"):
    """A batch whose row b holds `counts[b]` images (one chat turn with that many image items); labels: the answer."""
    model, processor = tm.build(family)
    processor.tokenizer.padding_side = padding_side
    texts = []
    for count, prompt in zip(counts, ["what is in the box ?", "which colour is the cup ?"], strict=True):
        content = [{"type": "image"}] * count + [{"type": "text", "text": prompt}]
        rendered = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        texts.append(rendered + " a red cup")
    images = [[tm.image(10 * b + i) for i in range(count)] for b, count in enumerate(counts)]
    batch = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    labels = torch.full_like(batch["input_ids"], -100)
    n = len(processor.tokenizer(" a red cup", add_special_tokens=False)["input_ids"])
    for b in range(len(counts)):
        last = batch["attention_mask"][b].nonzero().squeeze(1)[-n:]
        labels[b, last] = batch["input_ids"][b, last]
    return model, batch, labels


@torch.no_grad()
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_llava_onevision_several_images_in_one_sample(padding_side):
    """Two images in row 0, one in row 1: `batch_num_images` ([2, 1]) reaches the model, which takes the base view
    of each image of a multi-image sample (before, it was left out and the forward crashed). The reference equals
    the model's own forward and the no-image pass the attention-mask form."""
    model, batch, labels = _several_images_batch("llava_onevision", (2, 1), padding_side)
    assert batch["batch_num_images"].tolist() == [2, 1]
    _check_reference_and_no_image(model, batch, labels)


@torch.no_grad()
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pixtral_in_the_llava_layout_keeps_image_sizes_and_drops_break_and_end_tokens(padding_side):
    """Pixtral-12B's transformers layout: model type `llava` with a Pixtral tower. Images of different sizes need
    `image_sizes` (before: left out, and the reference crashed), and `[IMG_BREAK]`/`[IMG_END]` belong to the image
    block as in Mistral 3 (before: kept by the no-image pass)."""
    model, processor = tm.build("pixtral_llava")
    assert model.config.model_type == "llava"
    processor.tokenizer.padding_side = padding_side
    texts = [tm.chat(processor, p) + " a red cup" for p in ["what is in the box ?", "which colour is the cup ?"]]
    images = [tm.image(0, size=(24, 20)), tm.image(1, size=(12, 24))]
    batch = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    assert "image_sizes" in batch
    labels = torch.full_like(batch["input_ids"], -100)
    for b in range(2):
        last = batch["attention_mask"][b].nonzero().squeeze(1)[-3:]
        labels[b, last] = batch["input_ids"][b, last]
    tok = processor.tokenizer
    ids = batch["input_ids"]
    image = ids == tok.convert_tokens_to_ids("[IMG]")
    markers = (ids == tok.convert_tokens_to_ids("[IMG_BREAK]")) | (ids == tok.convert_tokens_to_ids("[IMG_END]"))
    assert markers.sum(-1).tolist() == [5, 6]  # one per row of patches: 20 / 4 and 24 / 4
    assert torch.equal(get_adapter(model).image_token_mask(ids), image | markers)
    _check_reference_and_no_image(model, batch, labels)


def test_llava_with_a_clip_tower_keeps_only_image_tokens_in_its_image_block():
    model, _, batch, _ = make_batch("llava")
    ids = batch["input_ids"]
    assert torch.equal(get_adapter(model).image_token_mask(ids), ids == model.config.image_token_id)
