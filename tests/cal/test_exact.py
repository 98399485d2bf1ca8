"""CAL weights and loss against brute force and against the paper's Algorithm 1, for every model family.

Brute force: the model's own forward with full logits, once with the image and once in the paper's no-image form
(image tokens masked out of the attention mask, original position ids), then explicit Python loops for the clamp,
the pooling and the loss. The output head is scaled so that the logit gains spread far beyond [alpha, beta].
"""

import pytest
import torch
from torch import nn

from tests import tiny_models as tm
from tests.cal.utils import cal_batch, scaled
from vcontrast.cal import CALConfig, cal_deltas, cal_loss, cal_weights
from vcontrast.models import get_adapter

ALPHA, BETA, WINDOW = 1.0, 5.0, 3


@pytest.fixture(scope="module", params=tm.FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def setup(family):
    model, _, batch = cal_batch(family)
    return scaled(model), batch


@pytest.fixture(scope="module")
def reference(setup):
    return brute_force(*setup)


@torch.no_grad()
def full_logits(model, batch, mask_image=False):
    """(B, T, V) float32 logits of the model's own forward, positions from the attention mask."""
    adapter = get_adapter(model)
    kwargs = {k: v for k, v in batch.items() if k != "labels"}
    if mask_image:
        image = adapter.image_token_mask(batch["input_ids"])
        kwargs["attention_mask"] = batch["attention_mask"].masked_fill(image, 0)
    return model(**kwargs, position_ids=adapter.position_ids(batch)).logits.float()


def brute_force(model, batch, alpha=ALPHA, beta=BETA, window=WINDOW):
    """Python loops over (b, p): weights, and the "batch" and "sample" losses."""
    with_image, without = full_logits(model, batch), full_logits(model, batch, mask_image=True)
    labels = batch["labels"]
    image = get_adapter(model).image_token_mask(batch["input_ids"])
    am = batch["attention_mask"]
    B, T = labels.shape

    def valid(b, p):
        if p < 1 or labels[b, p] == -100 or not am[b, p] or not am[b, p - 1]:
            return False
        return not image[b, p] and not image[b, p - 1]

    logprobs = torch.log_softmax(with_image, -1)
    clamped = torch.zeros(B, T)
    ce = torch.zeros(B, T)
    for b in range(B):
        for p in range(T):
            if valid(b, p):
                tok = int(labels[b, p])
                delta = float(with_image[b, p - 1, tok] - without[b, p - 1, tok])
                clamped[b, p] = min(max(delta, alpha), beta)
                ce[b, p] = -float(logprobs[b, p - 1, tok])
    pooled = torch.zeros(B, T)
    for b in range(B):
        for p in range(T):
            if valid(b, p):
                near = [
                    clamped[b, q] for q in range(p - window // 2, p + window // 2 + 1) if 0 <= q < T and valid(b, q)
                ]
                pooled[b, p] = sum(near) / len(near)
    loss_batch = float((pooled * ce).sum() / pooled.sum())
    per_sample = [float((pooled[b] * ce[b]).sum() / pooled[b].sum()) for b in range(B) if pooled[b].sum() > 0]
    return pooled, loss_batch, sum(per_sample) / len(per_sample)


def algorithm1(model, batch, alpha=ALPHA, beta=BETA, window=WINDOW):
    """The paper's Algorithm 1 (as in the official `llava_llama.py`), transcribed for one sample and its label span:
    gain of the gold logit with vs. without the image, clamp, AvgPool1d(count_include_pad=False), sum(w*CE)/sum(w)."""
    assert batch["input_ids"].shape[0] == 1
    logits_w = full_logits(model, batch)[0]  # (T, V)
    logits_wo = full_logits(model, batch, mask_image=True)[0]
    span = (batch["labels"][0] != -100).nonzero().squeeze(1)  # the answer: one contiguous span
    tokens = batch["labels"][0, span]
    sub = logits_w[span - 1].gather(1, tokens[:, None]) - logits_wo[span - 1].gather(1, tokens[:, None])
    sub = torch.clamp(sub, min=alpha, max=beta)
    pool = nn.AvgPool1d(window, stride=1, padding=window // 2, count_include_pad=False)
    weights = pool(sub[:, 0][None, None])[0, 0]
    ce = nn.functional.cross_entropy(logits_w[span - 1], tokens, reduction="none")
    return span, weights, float((weights * ce).sum() / (weights.sum()))


def test_gains_spread_beyond_the_clamp(setup):
    model, batch = setup
    delta, mask = cal_deltas(model, batch)
    assert (delta[mask] < ALPHA).any() and (delta[mask] > BETA).any()
    assert ((delta[mask] > ALPHA) & (delta[mask] < BETA)).any()


@pytest.mark.parametrize("contrast", ["none", "attention_mask"])
def test_weights_and_loss_match_brute_force(setup, reference, contrast):
    model, batch = setup
    pooled, loss_batch, loss_sample = reference
    config = CALConfig(alpha=ALPHA, beta=BETA, window=WINDOW, contrast=contrast)
    torch.testing.assert_close(cal_weights(model, batch, config), pooled, atol=1e-4, rtol=1e-4)
    out = cal_loss(model, batch, config)
    torch.testing.assert_close(out.weights, pooled, atol=1e-4, rtol=1e-4)
    assert out.loss.item() == pytest.approx(loss_batch, abs=1e-4, rel=1e-4)
    sample = cal_loss(
        model, batch, CALConfig(alpha=ALPHA, beta=BETA, window=WINDOW, contrast=contrast, normalize="sample")
    )
    assert sample.loss.item() == pytest.approx(loss_sample, abs=1e-4, rel=1e-4)
    assert out.logits.shape[:2] == batch["labels"].shape  # the model's own logits


def test_other_hyperparameters_match_brute_force(setup):
    model, batch = setup
    pooled, loss_batch, _ = brute_force(model, batch, alpha=0.0, beta=2.5, window=5)
    out = cal_loss(model, batch, CALConfig(alpha=0.0, beta=2.5, window=5))
    torch.testing.assert_close(out.weights, pooled, atol=1e-4, rtol=1e-4)
    assert out.loss.item() == pytest.approx(loss_batch, abs=1e-4, rel=1e-4)


def test_single_samples_match_algorithm_1(family, setup, reference):
    model, batch = setup
    batched = reference[0]
    for b in range(3):
        _, _, one = cal_batch(family, n=1, offset=b)
        span, weights, loss = algorithm1(model, one)
        out = cal_loss(model, one)
        torch.testing.assert_close(out.weights[0, span], weights, atol=1e-4, rtol=1e-4)
        assert out.loss.item() == pytest.approx(loss, abs=1e-4, rel=1e-4)
        # and the batched weights of that row are the single sample's
        row = batched[b][batch["labels"][b] != -100]
        torch.testing.assert_close(row, weights, atol=1e-4, rtol=1e-4)


def test_left_and_right_padding_agree(family, setup):
    model, right = setup
    _, _, left = cal_batch(family, padding_side="left")
    assert not torch.equal(right["attention_mask"], left["attention_mask"])
    wr, wl = cal_weights(model, right), cal_weights(model, left)
    for b in range(3):
        torch.testing.assert_close(wr[b][wr[b] != 0], wl[b][wl[b] != 0], atol=1e-4, rtol=1e-4)
    assert cal_loss(model, right).loss.item() == pytest.approx(cal_loss(model, left).loss.item(), abs=1e-4)
