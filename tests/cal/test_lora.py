"""CAL on PEFT LoRA models: every adapted module (the LM head, attention, the projector) takes part in both passes.

Brute force: the PEFT model's own forward with full logits, with the image and in the paper's no-image form (image
tokens masked out of the attention mask). The LoRA matrices start random (`init_lora_weights=False`), so every adapter
changes the logits; a head read by its weight alone would miss the `lm_head` adapter on the no-image side.
"""

import copy

import pytest
import torch

from tests.cal.test_exact import full_logits
from tests.cal.utils import cal_batch, scaled
from vcontrast.cal import CALConfig, cal_deltas, cal_loss
from vcontrast.contrast import gold_token_logits, score_tokens

peft = pytest.importorskip("peft")

TARGETS = {
    "lm_head": ["lm_head"],
    "q_v": ["q_proj", "v_proj"],
    "projector": r".*multi_modal_projector\.linear_\d",
}


def lora_model(family, targets, seed=0):
    model, _, batch = cal_batch(family)
    model = scaled(model)  # an untied head (LoRA on a tied head would adapt the embeddings too)
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False)
    return peft.get_peft_model(model, config).eval(), batch


def brute_force_delta(model, batch):
    """(B, T) gold-logit gains from the full logits of the model's own forward, 0 off the label positions."""
    with_image, without = full_logits(model, batch), full_logits(model, batch, mask_image=True)
    labels = batch["labels"]
    delta = torch.zeros(labels.shape)
    for b, p in (labels != -100).nonzero().tolist():
        if p >= 1:
            tok = int(labels[b, p])
            delta[b, p] = with_image[b, p - 1, tok] - without[b, p - 1, tok]
    return delta


@pytest.mark.parametrize("family,target", [("llava", t) for t in TARGETS] + [("qwen2_vl", "lm_head")])
def test_deltas_with_lora_equal_brute_force(family, target):
    model, batch = lora_model(family, TARGETS[target])
    adapted = [n for n, _ in model.named_modules() if n.endswith("lora_A.default")]
    assert adapted, f"LoRA adapted nothing for {TARGETS[target]!r}"
    expected = brute_force_delta(model, batch)
    for contrast in ("none", "attention_mask"):
        delta, mask = cal_deltas(model, batch, CALConfig(contrast=contrast))
        torch.testing.assert_close(delta[mask], expected[mask], atol=1e-4, rtol=1e-4)
        out = cal_loss(model, batch, CALConfig(contrast=contrast))
        torch.testing.assert_close(out.delta[mask], expected[mask], atol=1e-4, rtol=1e-4)
    # The adapters matter: without them the gains are others.
    with model.disable_adapter():
        plain = brute_force_delta(model, batch)
    assert (plain[mask] - expected[mask]).abs().max() > 1e-2


def test_gold_logits_and_logprobs_with_lora_on_the_head_equal_the_full_head():
    model, batch = lora_model("llava", ["lm_head"])
    labels = batch["labels"]
    with torch.no_grad():
        logits = full_logits(model, batch)
        scores = gold_token_logits(model, batch, labels, logprobs=True, chunk_size=2)  # several chunks
    logprobs = torch.log_softmax(logits, -1)
    for b, p in (labels != -100).nonzero().tolist():
        if p >= 1:
            tok = int(labels[b, p])
            assert scores.logits[b, p].item() == pytest.approx(logits[b, p - 1, tok].item(), abs=1e-4)
            assert scores.logprobs[b, p].item() == pytest.approx(logprobs[b, p - 1, tok].item(), abs=1e-4)


def test_score_tokens_goes_through_the_head_module():
    model, _ = lora_model("llava", ["lm_head"])
    hidden = torch.randn(5, model.config.text_config.hidden_size)
    tokens = torch.tensor([0, 3, 7, 1, 2])
    with torch.no_grad():
        gold, logprobs = score_tokens(model, hidden, tokens, logprobs=True, chunk_size=2)
        full = model.get_output_embeddings()(hidden).float()
    torch.testing.assert_close(gold, full.gather(1, tokens[:, None]).squeeze(1))
    torch.testing.assert_close(logprobs, torch.log_softmax(full, -1).gather(1, tokens[:, None]).squeeze(1))
    with pytest.raises(ValueError, match="chunk_size"):
        score_tokens(model, hidden, tokens, chunk_size=0)


def test_lora_head_trains_through_cal_loss():
    model, batch = lora_model("llava", ["lm_head"])
    model = copy.deepcopy(model).train()
    cal_loss(model, batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lm_head" in n and "lora_" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
