"""The shared primitive against brute force, for every model family.

Reference: the model's own forward (full vocabulary logits, then gather). No-image: the paper's attention-mask
form (image tokens masked out of the attention mask, position ids kept), computed with full logits.
"""

import pytest
import torch

from tests import tiny_models as tm
from vcontrast.conditions import NoImage
from vcontrast.contrast import ATTENTION_MASK, gold_token_logits, shift_labels
from vcontrast.models import get_adapter

PROMPTS = ["what is in the box ?", "which colour is the cup left of the plate ?"]
ANSWERS = ["a red cup", "blue"]


def make_batch(family, prompts=PROMPTS, answers=ANSWERS, padding_side="right", seeds=(0, 1)):
    """A padded batch (one image per sample) whose labels are the answer tokens (last n tokens of each row).

    PaliGemma's answers go in the processor's `suffix=`, as its training recipe has them: the answer tokens get
    `token_type_ids` 1 (causal) and are followed by `<eos>`, which gets no label here; in the bidirectional prefix
    each label's predicting position would see the label itself, which the adapter refuses."""
    model, proc = tm.build(family)
    proc.tokenizer.padding_side = padding_side
    images = get_adapter(model).batch_images([tm.image(s) for s in seeds])
    if family == "paligemma":
        texts = [tm.chat(proc, p) for p in prompts]
        batch = dict(proc(images=images, text=texts, suffix=list(answers), return_tensors="pt", padding=True))
    else:
        texts = [tm.chat(proc, p) + " " + a for p, a in zip(prompts, answers, strict=True)]
        batch = dict(proc(images=images, text=texts, return_tensors="pt", padding=True))
    batch.pop("labels", None)  # PaliGemma's processor adds its own (with `<eos>`)
    labels = torch.full_like(batch["input_ids"], -100)
    for b, answer in enumerate(answers):
        n = len(proc.tokenizer(answer, add_special_tokens=False)["input_ids"])
        valid = batch["attention_mask"][b].nonzero().squeeze(1)
        last = valid[-n - 1 : -1] if family == "paligemma" else valid[-n:]  # PaliGemma: before the `<eos>`
        labels[b, last] = batch["input_ids"][b, last]
    return model, proc, batch, labels


def brute_force(model, batch, labels, mask_image=False):
    """Full forward with explicit positions, full logits, log-softmax, gather at the shifted labels."""
    adapter = get_adapter(model)
    kwargs = dict(batch)
    if mask_image:
        kwargs["attention_mask"] = batch["attention_mask"].masked_fill(adapter.image_token_mask(batch["input_ids"]), 0)
    logits = model(**kwargs, position_ids=adapter.position_ids(batch)).logits.float()
    target = shift_labels(labels)
    valid = target != -100
    gold = logits.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    lp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    out_logit = torch.zeros(labels.shape)
    out_lp = torch.zeros(labels.shape)
    out_logit[:, 1:] = torch.where(valid, gold, 0)[:, :-1]
    out_lp[:, 1:] = torch.where(valid, lp, 0)[:, :-1]
    return out_logit, out_lp


def row_values(scores, mask):
    return [scores[b][mask[b]] for b in range(scores.shape[0])]


@pytest.fixture(params=tm.FAMILIES)
def family(request):
    return request.param


@torch.no_grad()
def test_reference_matches_full_logits(family):
    model, _, batch, labels = make_batch(family)
    scores = gold_token_logits(model, batch, labels, logprobs=True)
    logit, lp = brute_force(model, batch, labels)
    torch.testing.assert_close(scores.logits, logit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.logprobs, lp, atol=1e-5, rtol=1e-5)
    assert scores.mask.sum() == (labels != -100).sum()


@torch.no_grad()
def test_no_image_matches_attention_mask_form(family):
    model, _, batch, labels = make_batch(family)
    scores = gold_token_logits(model, batch, labels, NoImage(), logprobs=True)
    logit, lp = brute_force(model, batch, labels, mask_image=True)
    torch.testing.assert_close(scores.logits, logit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores.logprobs, lp, atol=1e-4, rtol=1e-4)
    # the library's own attention-mask condition agrees too
    paper = gold_token_logits(model, batch, labels, ATTENTION_MASK)
    torch.testing.assert_close(paper.logits, logit, atol=1e-4, rtol=1e-4)
    # and the image matters: without it the gold logits differ
    ref = gold_token_logits(model, batch, labels)
    assert not torch.allclose(ref.logits[scores.mask], scores.logits[scores.mask], atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("condition", [None, NoImage()], ids=["reference", "no_image"])
def test_batch_equals_single_samples(family, condition):
    model, _, batch, labels = make_batch(family)
    scores = gold_token_logits(model, batch, labels, condition, logprobs=True)
    for b in range(2):
        _, _, one, one_labels = make_batch(family, PROMPTS[b : b + 1], ANSWERS[b : b + 1], seeds=(b,))
        single = gold_token_logits(model, one, one_labels, condition, logprobs=True)
        torch.testing.assert_close(
            scores.logprobs[b][scores.mask[b]], single.logprobs[0][single.mask[0]], atol=1e-5, rtol=1e-5
        )


@torch.no_grad()
@pytest.mark.parametrize("condition", [None, NoImage()], ids=["reference", "no_image"])
def test_left_and_right_padding_agree(family, condition):
    model, _, right, right_labels = make_batch(family, padding_side="right")
    _, _, left, left_labels = make_batch(family, padding_side="left")
    assert not torch.equal(right["attention_mask"], left["attention_mask"])  # the padding really differs
    r = gold_token_logits(model, right, right_labels, condition)
    l_ = gold_token_logits(model, left, left_labels, condition)
    for a, b in zip(row_values(r.logits, r.mask), row_values(l_.logits, l_.mask), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_reference(family):
    model, _, batch, labels = make_batch(family)
    scores = gold_token_logits(model, batch, labels)
    scores.logits.sum().backward()
    head = get_adapter(model).output_head()[0].weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_image_tokens_without_pixels_raise():
    model, _, batch, labels = make_batch("llava")
    batch = {k: v for k, v in batch.items() if k != "pixel_values"}
    with pytest.raises(ValueError, match="image tokens .* no `pixel_values`"):
        gold_token_logits(model, batch, labels)


def test_pixel_condition_is_rejected_with_a_pointer():
    from vcontrast.conditions import GaussianBlur

    model, _, batch, labels = make_batch("llava")
    with pytest.raises(ValueError, match="changes pixels"):
        gold_token_logits(model, batch, labels, GaussianBlur(1.0))


def test_labels_shape_mismatch_raises():
    model, _, batch, labels = make_batch("llava")
    with pytest.raises(ValueError, match="labels shape"):
        gold_token_logits(model, batch, labels[:, :-1])


def test_label_ids_outside_the_vocabulary_raise():
    model, _, batch, labels = make_batch("llava")
    labels = labels.masked_fill(labels == -100, -1)  # an ignore index of -1 would silently score the last rows
    with pytest.raises(ValueError, match=r"label token id -1 is outside the vocabulary \[0, "):
        gold_token_logits(model, batch, labels)


def test_unsupported_model_type_lists_supported():
    import transformers as tf

    config = tf.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10)
    with pytest.raises(ValueError, match="'gpt2'.*supported model types: .*llava"):
        get_adapter(tf.GPT2LMHeadModel(config))
