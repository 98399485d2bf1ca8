"""Inputs and models the adapters refuse with a ValueError that names the problem, where running would give wrong
numbers silently or crash deep inside the model: videos, a model without its LM head, PaliGemma labels inside the
bidirectional prefix, Pixtral-layout models the generic adapter cannot prove right."""

import re

import pytest
import torch

from tests import tiny_models as tm
from tests.models.test_contrast import make_batch
from vcontrast.conditions import NoImage
from vcontrast.contrast import ATTENTION_MASK, gold_token_logits
from vcontrast.models import get_adapter

CONDITIONS = [None, NoImage(), ATTENTION_MASK]
CONDITION_IDS = ["reference", "no_image", "attention_mask"]


def _qwen2_vl_video_batch():
    """A Qwen2-VL batch whose sample carries a video (8 video tokens of a 2 x 4 x 4 patch grid) and no image, built
    by hand as the processor would (the tiny processor has no video processor)."""
    model, processor = tm.build("qwen2_vl")
    tok, config = processor.tokenizer, model.config
    grid = torch.tensor([[2, 4, 4]])  # (t, h, w) patches; 2 * 2 merge -> 8 tokens
    count = int(grid.prod()) // 4
    before = tok("<|im_start|>user what is in the box ?", add_special_tokens=False)["input_ids"]
    after = tok("<|im_end|> <|im_start|>assistant a red cup", add_special_tokens=False)["input_ids"]
    video = [config.vision_start_token_id] + [config.video_token_id] * count + [config.vision_end_token_id]
    ids = before + video + after
    types = [0] * (len(before) + 1) + [2] * count + [0] * (1 + len(after))
    batch = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "mm_token_type_ids": torch.tensor([types]),
        "pixel_values_videos": torch.randn(int(grid.prod()), 3 * 2 * 4 * 4),  # (patches, C * t * p * p)
        "video_grid_thw": grid,
    }
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, -3:] = batch["input_ids"][0, -3:]
    return model, batch, labels


@torch.no_grad()
@pytest.mark.parametrize("condition", CONDITIONS, ids=CONDITION_IDS)
def test_qwen2_vl_video_inputs_are_refused(condition):
    """Before: both passes ran with the video left out (the adapter passes only image inputs), deltas 0."""
    model, batch, labels = _qwen2_vl_video_batch()
    with pytest.raises(ValueError, match=r"video input `pixel_values_videos`: videos are not supported"):
        gold_token_logits(model, batch, labels, condition)
    grid_only = {k: v for k, v in batch.items() if k != "pixel_values_videos"}
    with pytest.raises(ValueError, match=r"video input `video_grid_thw`: videos are not supported"):
        gold_token_logits(model, grid_only, labels, condition)
    tokens_only = {k: v for k, v in grid_only.items() if k != "video_grid_thw"}
    video_id = model.config.video_token_id
    with pytest.raises(ValueError, match=rf"video tokens \(`video_token_id` {video_id}\).*videos are not supported"):
        gold_token_logits(model, tokens_only, labels, condition)


@torch.no_grad()
def test_qwen2_vl_image_and_video_in_one_sample_is_refused():
    model, _, image_batch, _ = make_batch("qwen2_vl", seeds=(0,), prompts=["what is in the box ?"], answers=["a"])
    _, video_batch, _ = _qwen2_vl_video_batch()
    batch = {**video_batch, **{k: image_batch[k] for k in ("pixel_values", "image_grid_thw")}}
    with pytest.raises(ValueError, match="videos are not supported"):
        get_adapter(model).check_inputs(batch)


@torch.no_grad()
@pytest.mark.parametrize("condition", CONDITIONS, ids=CONDITION_IDS)
def test_llava_onevision_video_inputs_are_refused(condition):
    model, _, batch, labels = make_batch("llava_onevision")
    with_video = dict(batch, pixel_values_videos=torch.randn(2, 2, 3, 16, 16))  # (B, frames, 3, H, W)
    with pytest.raises(ValueError, match=r"video input `pixel_values_videos`: videos are not supported"):
        gold_token_logits(model, with_video, labels, condition)
    # the `<video>` placeholder in the text alone is refused too
    video_id = model.config.video_token_id
    ids = batch["input_ids"].clone()
    ids[:, 1] = video_id
    with pytest.raises(ValueError, match=rf"video tokens \(`video_token_id` {video_id}\)"):
        gold_token_logits(model, dict(batch, input_ids=ids), labels, condition)
    gold_token_logits(model, batch, labels, condition)  # the image batch itself runs


@pytest.mark.parametrize(
    ("family", "load_with"),
    [("llava", "LlavaForConditionalGeneration"), ("qwen2_vl", "Qwen2VLForConditionalGeneration")],
)
def test_a_model_without_its_lm_head_is_refused_naming_the_class_to_load(family, load_with):
    """`AutoModel.from_pretrained` gives the base model (`LlavaModel`, `Qwen2VLModel`): no head, no `.model`.
    Before: it got an adapter and failed later with an AttributeError deep inside."""
    model, _, batch, labels = make_batch(family)
    base = model.model
    name = type(base).__name__
    with pytest.raises(ValueError, match=rf"{name} \(model type '{family}'\) has no language-model head.*{load_with}"):
        get_adapter(base)
    with pytest.raises(ValueError, match=load_with):
        gold_token_logits(base, batch, labels)


@torch.no_grad()
@pytest.mark.parametrize("condition", CONDITIONS, ids=CONDITION_IDS)
def test_paligemma_labels_in_the_bidirectional_prefix_are_refused(condition):
    """Labels with `token_type_ids` 0 are scored from a position that attends to the label itself: before, changing
    a label token in the input changed its own score; now such labels are refused, with a pointer to `suffix=`."""
    model, _, batch, labels = make_batch("paligemma")
    assert bool((batch["token_type_ids"][labels != -100] == 1).all())  # make_batch puts the answers in `suffix=`
    prefix = dict(batch, token_type_ids=torch.zeros_like(batch["token_type_ids"]))
    with pytest.raises(ValueError, match=r"bidirectional prefix \(`token_type_ids` 0; first: row 0.*`suffix=`"):
        gold_token_logits(model, prefix, labels, condition)
    gold_token_logits(model, batch, labels, condition)  # the suffix form runs
    # without token types the model attends causally everywhere: nothing leaks, nothing to refuse
    causal = {k: v for k, v in batch.items() if k != "token_type_ids"}
    gold_token_logits(model, causal, labels, condition)


@torch.no_grad()
def test_paligemma_suffix_labels_do_not_see_themselves():
    """The suffix form is causal: replacing the first label token in the input leaves its own score unchanged (in
    the prefix form it changed it: the predicting position attended to it)."""
    model, _, batch, labels = make_batch("paligemma")
    scores = gold_token_logits(model, batch, labels)
    ids = batch["input_ids"].clone()
    first = [int((labels[b] != -100).nonzero()[0]) for b in range(2)]
    for b, p in enumerate(first):
        ids[b, p] = (ids[b, p] + 1) % model.config.text_config.vocab_size  # another token in the input
    changed = gold_token_logits(model, dict(batch, input_ids=ids), labels)
    for b, p in enumerate(first):
        torch.testing.assert_close(changed.logits[b, p], scores.logits[b, p])


def _without_adapter(monkeypatch, model_type):
    from vcontrast import models

    monkeypatch.setattr(models, "ADAPTERS", {k: v for k, v in models.ADAPTERS.items() if k != model_type})


@pytest.mark.parametrize("model_type", ["lighton_ocr", "mistral_large4"])
def test_generic_adapter_refuses_pixtral_layout_models(model_type):
    """transformers 5.24's LightOnOCR and Mistral Large 4 (Pixtral towers, no vcontrast adapter), built on the meta
    device. Before: accepted by the generic adapter, whose no-image pass kept `[IMG_BREAK]`/`[IMG_END]`."""
    import transformers as tf
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers {tf.__version__} has no {model_type!r}")
    with torch.device("meta"):
        model = tf.AutoModelForImageTextToText.from_config(CONFIG_MAPPING[model_type]())
    refusal = rf"\(model type '{model_type}'\) is not supported: its vision tower is Pixtral"
    with pytest.raises(ValueError, match=refusal):
        get_adapter(model)


@torch.no_grad()
def test_generic_adapter_refuses_the_tiny_mistral3_without_its_adapter(monkeypatch):
    model, _ = tm.build("mistral3")
    _without_adapter(monkeypatch, "mistral3")
    with pytest.raises(ValueError, match=r"is not supported: its vision tower is Pixtral's.*\[IMG_BREAK\]"):
        get_adapter(model)


def test_generic_adapter_refuses_a_processor_with_several_image_token_ids(monkeypatch):
    """InternVL without its adapter passes the generic model checks, but its processor writes `<img>`, `</img>` and
    `<IMG_CONTEXT>` for an image: whether the markers belong to the image block is unknown, so CRG refuses it."""
    from vcontrast.crg import CRG
    from vcontrast.models import GenericAdapter

    model, processor = tm.build("internvl")
    _without_adapter(monkeypatch, "internvl")
    assert isinstance(get_adapter(model), GenericAdapter)
    ids = sorted(processor.image_token_ids)
    assert len(ids) == 3
    with pytest.raises(ValueError, match=re.escape(f"writes several token ids for an image ({ids})")):
        CRG(model, processor)
