"""The pure CAL functions in closed form, the config's checks, the cost of the contrast pass and bad inputs."""

import copy

import pytest
import torch
import transformers as tf

from tests import tiny_models as tm
from tests.cal.utils import cal_batch, scaled
from vcontrast.cal import (
    CALConfig,
    ContrastCollator,
    add_contrast_pixels,
    cal_deltas,
    cal_label_mask,
    cal_loss,
    cal_weights,
    clamp_weights,
    pool_weights,
    token_weights,
    weighted_loss,
)
from vcontrast.conditions import DiffusionNoise, GaussianBlur, NoImage, PatchMask
from vcontrast.models import get_adapter

# --------------------------------------------------------------------------------------------------- pure functions


def loop_pool(weights, mask, window):
    out = torch.zeros_like(weights)
    B, T = weights.shape
    for b in range(B):
        for p in range(T):
            if mask[b, p]:
                near = [
                    weights[b, q] for q in range(p - window // 2, p + window // 2 + 1) if 0 <= q < T and mask[b, q]
                ]
                out[b, p] = sum(near) / len(near)
    return out


@pytest.mark.parametrize("window", [1, 3, 5])
def test_pool_matches_loops_on_random_masks(window):
    weights = torch.rand(4, 13) * 5
    mask = torch.rand(4, 13) > 0.4
    torch.testing.assert_close(pool_weights(weights, mask, window), loop_pool(weights, mask, window))


def test_pool_never_leaks_across_samples_prompt_or_padding():
    # Hand-made labels: row 0 = prompt, 3-token answer, padding; row 1 = two assistant turns separated by a user turn.
    labels = torch.tensor(
        [
            [-100, -100, -100, 7, 8, 9, -100, -100],
            [-100, 5, 6, -100, -100, 4, 4, -100],
        ]
    )
    mask = labels != -100
    delta = torch.tensor(
        [
            [100.0, 100.0, 100.0, 2.0, 3.0, 4.0, 100.0, 100.0],
            [100.0, 2.0, 4.0, 100.0, 100.0, 1.0, 3.0, 100.0],
        ]
    )
    w = token_weights(delta, mask, alpha=1.0, beta=5.0, window=3)
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0, 2.5, 3.0, 3.5, 0.0, 0.0],
            [0.0, 3.0, 3.0, 0.0, 0.0, 2.0, 2.0, 0.0],
        ]
    )
    torch.testing.assert_close(w, expected)
    # Anything outside a row's label positions, or in the other row, changes nothing.
    noisy = torch.where(mask, delta, torch.randn_like(delta) * 50)
    torch.testing.assert_close(token_weights(noisy, mask), w)
    other = delta.clone()
    other[1] = -7.0
    torch.testing.assert_close(token_weights(other, mask)[0], w[0])


def test_pool_of_flattened_batch_would_leak():
    # The official code pools the flattened batch: the first label of row 1 would see row 0's last position.
    delta = torch.tensor([[1.0, 1.0, 5.0], [1.0, 1.0, 1.0]])
    mask = torch.ones_like(delta, dtype=torch.bool)
    flat = torch.nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)(delta.reshape(1, 1, -1)).reshape(2, 3)
    ours = token_weights(delta, mask)
    assert ours[1, 0] == 1.0 and flat[1, 0] > 1.0


def test_clamp_and_closed_forms():
    mask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(
        clamp_weights(torch.tensor([[-3.0, 2.0, 9.0, 9.0]]), mask, 1.0, 5.0), torch.tensor([[1.0, 2.0, 5.0, 0.0]])
    )
    ce = torch.tensor([[1.0, 2.0, 4.0, 0.0]])
    # Equal weights reduce to the plain mean cross-entropy, whatever their value.
    for c in (0.3, 1.0, 5.0):
        loss = weighted_loss(ce, torch.full_like(ce, c) * mask, mask)
        assert loss.item() == pytest.approx(7.0 / 3)
    w = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert weighted_loss(ce, w, mask).item() == pytest.approx((1 + 6 + 8) / 6)
    assert weighted_loss(ce, w, mask, num_items=10).item() == pytest.approx(15 / 10)


def test_pure_functions_name_bad_parameters():
    delta, mask = torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"`alpha` \(=5.0\) has to be <= `beta` \(=1.0\)"):
        clamp_weights(delta, mask, alpha=5.0, beta=1.0)
    for window in (2, 3.0):
        with pytest.raises(ValueError, match=rf"`window` \(={window}\)"):
            token_weights(delta, mask, window=window)


def test_sample_normalisation_closed_form():
    ce = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    w = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Sample 0: (1 + 9) / 4; sample 1: 2; sample 2 has no label and does not count.
    assert weighted_loss(ce, w, mask, "sample").item() == pytest.approx((2.5 + 2.0) / 2)
    assert weighted_loss(ce, w, mask, "sample", num_items=4).item() == pytest.approx(4.5 / 4)
    # Batch normalisation weighs tokens, not samples.
    assert weighted_loss(ce, w, mask, "batch").item() == pytest.approx((1 + 9 + 4) / 6)


def test_zero_weights_give_a_finite_zero_loss():
    ce = torch.tensor([[1.0, 2.0]], requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    for normalize in ("batch", "sample"):
        loss = weighted_loss(ce, torch.zeros(1, 2), mask, normalize)
        assert loss.item() == 0.0
        loss.backward()


def test_weights_are_detached():
    ce = torch.tensor([[1.0, 2.0]], requires_grad=True)
    w = torch.tensor([[1.0, 3.0]], requires_grad=True)
    weighted_loss(ce, w, torch.ones(1, 2, dtype=torch.bool)).backward()
    assert w.grad is None and ce.grad is not None


# --------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.5}, r"`alpha` \(=-0.5\)"),
        ({"alpha": 2.0, "beta": 2.0}, r"`beta` \(=2.0\)"),
        ({"alpha": 6.0}, r"`beta` \(=5.0\) has to be a finite number > alpha \(=6.0\)"),
        ({"window": 2}, r"`window` \(=2\)"),
        ({"window": 0}, r"`window` \(=0\)"),
        ({"window": 3.0}, r"`window` \(=3.0\)"),
        ({"normalize": "token"}, r"`normalize` \(='token'\)"),
        ({"contrast": "sharpen:2"}, "sharpen:2"),
        ({"contrast": 3}, r"`contrast` \(=3\)"),
        ({"alpha": float("nan")}, r"`alpha` \(=nan\)"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CALConfig(**kwargs)


def test_config_conditions_and_cli_parsing():
    assert CALConfig().contrast == NoImage() and CALConfig().drops_image
    assert CALConfig(contrast="paper").contrast == "attention_mask"
    assert CALConfig(contrast="patch:0.5").contrast == PatchMask(0.5)
    assert CALConfig(contrast=GaussianBlur(10)).uses_pixels
    assert CALConfig(contrast="noise:500").contrast == DiffusionNoise(500)
    (config,) = tf.HfArgumentParser(CALConfig).parse_args_into_dataclasses(
        ["--alpha", "0.5", "--beta", "4", "--window", "5", "--contrast", "blur:1", "--normalize", "sample"]
    )
    assert config == CALConfig(alpha=0.5, beta=4.0, window=5, contrast=GaussianBlur(1.0), normalize="sample")


# ----------------------------------------------------------------------------------------------------- model level


def test_equal_weights_reduce_to_the_models_own_cross_entropy():
    # alpha = 100 > every logit gain: all weights equal alpha, so the CAL loss is plain CE (closed form).
    model, _, batch = cal_batch("llava")
    out = cal_loss(model, batch, CALConfig(alpha=100.0, beta=101.0))
    assert torch.all(out.weights[out.mask] == 100.0)
    plain = model(**batch).loss
    assert out.loss.item() == pytest.approx(plain.item(), abs=1e-5)


def test_no_image_gain_gives_plain_cross_entropy():
    # A model whose output ignores the image: delta = 0 everywhere, so w = alpha and the loss is plain CE.
    model, _, batch = cal_batch("llava")
    text_batch = {k: v for k, v in batch.items() if k != "pixel_values"}
    text_batch["input_ids"] = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, 5)
    out = cal_loss(model, text_batch, CALConfig(alpha=2.0))
    assert torch.all(out.delta == 0) and torch.all(out.weights[out.mask] == 2.0)
    assert out.loss.item() == pytest.approx(model(**text_batch).loss.item(), abs=1e-5)


def test_loss_gradient_flows_and_weights_do_not():
    model, _, batch = cal_batch("llava")
    model = scaled(model)
    out = cal_loss(model, batch)
    assert not out.weights.requires_grad
    out.loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


class Counter:
    def __init__(self, module):
        self.calls, self.rows = 0, []
        module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls += 1
        x = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
        self.rows.append(x.shape[0])


def test_vision_tower_runs_once_and_the_contrast_pass_heads_only_the_label_rows():
    model, _, batch = cal_batch("llava")
    model = copy.deepcopy(model)
    vision = Counter(model.model.vision_tower)
    head_outputs = []
    model.lm_head.register_forward_hook(lambda m, a, out: head_outputs.append(tuple(out.shape)))
    out = cal_loss(model, batch)
    assert vision.calls == 1  # the no-image pass skips the vision tower
    vocab = model.config.text_config.vocab_size
    (batch_size, length), n_labels = batch["input_ids"].shape, int(out.mask.sum())
    # The training forward's (B, T, V) logits; then the contrast pass: the head module itself on the label rows only
    # (no second (B, T, V) tensor), and the model's own head call emptied.
    assert head_outputs[0] == (batch_size, length, vocab)
    assert head_outputs[1:-1] == [(n_labels, vocab)] and head_outputs[-1][1] == 0
    cal_loss(model, batch, CALConfig(contrast="attention_mask"))
    assert vision.calls == 3  # the paper's form runs it twice


def test_no_image_pass_covers_text_tokens_only():
    model, _, batch = cal_batch("llava")
    model = copy.deepcopy(model)
    lm = Counter(model.model.language_model)
    seen = []
    model.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k.get("inputs_embeds", k.get("input_ids")).shape), with_kwargs=True
    )
    cal_loss(model, batch)
    n_image = int((batch["input_ids"][0] == model.config.image_token_id).sum())
    text_len = int((batch["attention_mask"].sum(1) - n_image).max())
    assert lm.calls == 2 and seen[1][1] == text_len < seen[0][1] - n_image + 1


def test_text_only_samples_get_delta_zero_and_no_second_pass():
    model, proc, _ = cal_batch("llava")
    model = copy.deepcopy(model)
    proc.tokenizer.padding_side = "right"
    texts = [tm.chat(proc, "what is in the box ?") + " a red cup", "user : what is in the box ? assistant : a red cup"]
    batch = dict(proc(images=[tm.image(0)], text=texts, return_tensors="pt", padding=True))
    batch["labels"] = _answer_labels(proc, batch, ["a red cup", "a red cup"])
    lm = Counter(model.model.language_model)
    out = cal_loss(model, batch)
    assert lm.rows == [2, 1]  # the contrast pass sees the image sample only
    assert torch.all(out.delta[1] == 0) and torch.all(out.weights[1][out.mask[1]] == 1.0)
    assert (out.delta[0][out.mask[0]] != 0).all()
    # A batch with no image at all: one pass.
    text_only = {k: v[1:] for k, v in batch.items() if k != "pixel_values"}
    lm.rows.clear()
    cal_loss(model, text_only)
    assert lm.rows == [1]


def test_contrast_pass_is_in_eval_mode_and_modes_are_restored():
    model, _, batch = cal_batch("llava")
    model = copy.deepcopy(model).train()
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5  # heavy dropout: any pass in train mode would be random
    model.model.vision_tower.eval()  # a frozen part left in eval mode stays so
    modes = {name: m.training for name, m in model.named_modules()}
    delta_1, _ = cal_deltas(model, batch)
    delta_2, _ = cal_deltas(model, batch)
    torch.testing.assert_close(delta_1, delta_2)  # both passes of cal_deltas are deterministic (eval mode)
    attention = next(m for m in model.model.language_model.modules() if hasattr(m, "attention_dropout"))
    seen = []
    attention.register_forward_pre_hook(lambda m, a, k: seen.append(m.training), with_kwargs=True)
    out = cal_loss(model, batch)
    assert seen == [True, False]  # training forward with dropout, contrast pass without
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert out.loss.requires_grad


def test_hidden_state_path_when_the_model_returns_no_logits():
    model, _, batch = cal_batch("qwen2_vl")
    model = scaled(model)
    expected = cal_loss(model, batch)

    class NoLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner  # unwrapped like DDP
            self.config = inner.config

        def forward(self, **kwargs):
            out = self.module(**kwargs, output_hidden_states=self.hidden)
            out.logits = None
            return out

    wrapped = NoLogits(model)
    wrapped.hidden = True
    got = cal_loss(wrapped, batch)
    assert got.logits is None
    assert got.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)
    torch.testing.assert_close(got.weights, expected.weights)
    wrapped.hidden = False
    with pytest.raises(ValueError, match="neither `logits` nor `hidden_states`"):
        cal_loss(wrapped, batch)


def test_precomputed_weights_skip_the_contrast_pass():
    model, _, batch = cal_batch("llava")
    model = copy.deepcopy(model)
    weights = cal_weights(model, batch)
    lm = Counter(model.model.language_model)
    out = cal_loss(model, {**batch, "cal_weights": weights})
    assert lm.calls == 1 and out.delta is None
    assert out.loss.item() == pytest.approx(cal_loss(model, batch).loss.item(), abs=1e-5)
    with pytest.raises(ValueError, match="`cal_weights` shape"):
        cal_loss(model, {**batch, "cal_weights": weights[:, :-1]})


# ------------------------------------------------------------------------------------------- image-space contrasts


@pytest.mark.parametrize("condition", [PatchMask(0.5, grid=(4, 4)), GaussianBlur(3.0), DiffusionNoise(500)])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_pixel_conditions_match_brute_force(family, condition):
    model, proc = tm.build(family)
    model = scaled(model)
    proc.tokenizer.padding_side = "right"
    images = [tm.image(0), tm.image(1)]
    texts = [tm.chat(proc, "what is in the box ?") + " " + a for a in ["a red cup", "yes"]]
    batch = dict(proc(images=images, text=texts, return_tensors="pt", padding=True))
    batch["labels"] = _answer_labels(proc, batch, ["a red cup", "yes"])
    batch = add_contrast_pixels(batch, proc, images, texts, condition, return_tensors="pt", padding=True)
    assert "contrast_pixel_values" in batch
    config = CALConfig(contrast=condition)
    delta, mask = cal_deltas(model, batch, config)
    # Brute force: the model's own forward on the contrast images.
    adapter = get_adapter(model)
    pos = adapter.position_ids(batch)
    contrast = {k: v for k, v in batch.items() if not k.startswith("contrast_") and k != "labels"}
    for key in adapter.pixel_keys:
        if "contrast_" + key in batch:
            contrast[key] = batch["contrast_" + key]
    plain = {k: v for k, v in batch.items() if not k.startswith("contrast_") and k != "labels"}
    with torch.no_grad():
        lw = model(**plain, position_ids=pos).logits
        lc = model(**contrast, position_ids=pos).logits
    b, p = mask.nonzero(as_tuple=True)
    tok = batch["labels"][b, p]
    expected = lw[b, p - 1, tok] - lc[b, p - 1, tok]
    torch.testing.assert_close(delta[b, p], expected, atol=1e-4, rtol=1e-4)
    assert (expected.abs() > 1e-3).any()
    out = cal_loss(model, batch, config)
    torch.testing.assert_close(out.weights, token_weights(delta, mask), atol=1e-4, rtol=1e-4)


def _answer_labels(proc, batch, answers):
    labels = torch.full_like(batch["input_ids"], -100)
    for b, answer in enumerate(answers):
        n = len(proc.tokenizer(answer, add_special_tokens=False)["input_ids"])
        last = batch["attention_mask"][b].nonzero().squeeze(1)[-n:]
        labels[b, last] = batch["input_ids"][b, last]
    return labels


def test_contrast_collator_adds_contrast_pixels():
    from tests.cal.utils import RowCollator, sft_rows

    _, proc = tm.build("llava")
    rows = sft_rows(proc, 2)
    collator = ContrastCollator(RowCollator(proc), PatchMask(0.5, grid=(4, 4)), image_keys=("image",))
    batch = collator(rows)
    plain = RowCollator(proc)(rows)
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    assert torch.equal(batch["pixel_values"], plain["pixel_values"])
    assert not torch.equal(batch["contrast_pixel_values"], plain["pixel_values"])
    with pytest.raises(ValueError, match="no contrast pixels"):
        ContrastCollator(RowCollator(proc), NoImage())


def test_contrast_collator_refuses_a_running_count_in_dataloader_workers():
    # Each worker would count its images from 0 and repeat the others' random masks: a stable key is required there.
    from torch.utils.data import DataLoader

    from tests.cal.utils import RowCollator, sft_rows
    from vcontrast.conditions import GaussianBlur

    _, proc = tm.build("llava")
    rows = [{**row, "index": i} for i, row in enumerate(sft_rows(proc, 2))]

    def first_batch(condition, **kwargs):
        collator = ContrastCollator(RowCollator(proc), condition, image_keys=("image",), **kwargs)
        return next(iter(DataLoader(rows, batch_size=2, num_workers=1, collate_fn=collator)))

    with pytest.raises(ValueError, match="DataLoader worker without `key_field`"):
        first_batch(PatchMask(0.5, grid=(4, 4)))
    keyed = first_batch(PatchMask(0.5, grid=(4, 4)), key_field="index")
    in_process = ContrastCollator(RowCollator(proc), PatchMask(0.5, grid=(4, 4)), ("image",), key_field="index")(rows)
    assert torch.equal(keyed["contrast_pixel_values"], in_process["contrast_pixel_values"])
    assert "contrast_pixel_values" in first_batch(GaussianBlur(1.0))  # deterministic: no key needed


def test_pixel_condition_without_contrast_pixels_raises():
    model, _, batch = cal_batch("llava")
    with pytest.raises(ValueError, match="needs `contrast_pixel_values`"):
        cal_loss(model, batch, CALConfig(contrast="blur:1"))


# ------------------------------------------------------------------------------------------------------ bad inputs


def test_all_labels_ignored_raises():
    model, _, batch = cal_batch("llava")
    batch["labels"] = torch.full_like(batch["labels"], -100)
    with pytest.raises(ValueError, match="no label token to weight"):
        cal_loss(model, batch)
    with pytest.raises(ValueError, match="no label token to weight"):
        cal_weights(model, batch)


def test_a_row_without_label_tokens_raises_and_names_it():
    # One row with nothing to train on (an answer cut off by max_length) is an error, not a silent no-op.
    model, _, batch = cal_batch("llava")
    assert batch["labels"].shape[0] >= 2
    batch["labels"][1] = -100
    for normalize in ("batch", "sample"):
        with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no label token.*every label of row\(s\) \[1\]"):
            cal_loss(model, batch, CALConfig(normalize=normalize))
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no label token"):
        cal_weights(model, batch)
    # Labels only on the image tokens: not -100, yet nothing to weight.
    model, _, batch = cal_batch("llava")
    image = batch["input_ids"][1] == model.config.image_token_id
    batch["labels"][1] = torch.where(image, batch["input_ids"][1], torch.full_like(batch["labels"][1], -100))
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no label token to weight: a label must sit"):
        cal_loss(model, batch)


def test_label_ids_outside_the_vocabulary_raise():
    model, _, batch = cal_batch("llava")
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == -100, -1)  # not the ignore index
    with pytest.raises(ValueError, match="label token id -1 is outside the vocabulary"):
        cal_loss(model, batch)


def test_missing_labels_and_shape_mismatch_raise():
    model, _, batch = cal_batch("llava")
    with pytest.raises(ValueError, match="needs `labels`"):
        cal_weights(model, {k: v for k, v in batch.items() if k != "labels"})
    with pytest.raises(ValueError, match="labels shape"):
        cal_weights(model, {**batch, "labels": batch["labels"][:, 1:]})


def test_image_tokens_without_pixels_raise():
    model, _, batch = cal_batch("llava")
    with pytest.raises(ValueError, match="no `pixel_values`"):
        cal_loss(model, {k: v for k, v in batch.items() if k != "pixel_values"})


def test_unsupported_model_raises():
    config = tf.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10)
    model = tf.GPT2LMHeadModel(config)
    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    batch["labels"] = batch["input_ids"]
    with pytest.raises(ValueError, match="'gpt2'.*not supported"):
        cal_weights(model, batch)


def test_labels_on_image_tokens_are_left_out():
    # TRL's collator labels every token, image placeholders included: those (and the token after them) get weight 0.
    model, _, batch = cal_batch("llava")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    mask = cal_label_mask(model, {**batch, "labels": labels})
    image = batch["input_ids"] == model.config.image_token_id
    assert not (mask & image).any()
    assert not mask[:, 1:][image[:, :-1]].any()
    weights = cal_weights(model, {**batch, "labels": labels})
    assert (weights[image] == 0).all() and (weights[mask] > 0).all()
