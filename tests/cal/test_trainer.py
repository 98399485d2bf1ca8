"""CALTrainer: trains, is exact under gradient accumulation, evaluates with labels, logs, works with PEFT LoRA."""

import itertools

import pytest
import torch
import transformers as tf

from tests import tiny_models as tm
from tests.cal.utils import RowCollator, sft_rows, train_copy
from vcontrast.cal import CALConfig, CALTrainer, cal_deltas, cal_loss
from vcontrast.cal.trainer import gatherable_outputs


def args(tmp_path, **kwargs):
    defaults = {
        "output_dir": str(tmp_path),
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 4,
        "max_steps": 3,
        "learning_rate": 1e-2,
        "seed": 0,
    }
    return tf.TrainingArguments(**{**defaults, **kwargs})


def trainer_for(model, tmp_path, rows, config=None, **kwargs):
    proc = tm.build("llava")[1]
    return CALTrainer(
        model=model,
        args=args(tmp_path, **kwargs),
        train_dataset=rows,
        eval_dataset=rows,
        data_collator=RowCollator(proc),
        cal_config=config or CALConfig(),
    )


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_steps_change_parameters_and_log_the_mean_weight(tmp_path):
    model = train_copy("llava")
    proc = tm.build("llava")[1]
    before = params(model)
    trainer = trainer_for(model, tmp_path, sft_rows(proc, 4), max_steps=2)
    trainer.train()
    after = params(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    assert all(1.0 <= log["cal/mean_weight"] <= 5.0 for log in logs)
    assert all("cal/mean_delta" in log and "cal/frac_negative_delta" in log for log in logs)


@pytest.mark.parametrize("normalize", ["batch", "sample"])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, normalize):
    proc = tm.build("llava")[1]
    rows = sft_rows(proc, 4)
    rows[1]["answer"] = "two small green triangle near the big blue square"  # uneven label counts and weights
    config = CALConfig(alpha=0.5, beta=3.0, normalize=normalize)
    common = {
        "optim": "sgd",
        "learning_rate": 1.0,
        "max_grad_norm": 0.0,
        "max_steps": 1,
        "lr_scheduler_type": "constant",
    }
    big, small = train_copy("llava"), train_copy("llava")
    big_trainer = trainer_for(big, tmp_path / "big", rows, config, per_device_train_batch_size=4, **common)
    big_trainer.train()
    accumulated = trainer_for(
        small, tmp_path / "small", rows, config, per_device_train_batch_size=2, gradient_accumulation_steps=2, **common
    )
    accumulated.train()
    for (name, p), q in zip(big.named_parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
    # The logged loss of the accumulated step is the big batch's loss.
    assert accumulated.state.log_history[0]["loss"] == pytest.approx(
        big_trainer.state.log_history[0]["loss"], rel=1e-5
    )

    if normalize == "sample":
        return  # equal-sized micro-batches: the mean of per-micro-batch means is already exact
    # Sanity: normalising each micro-batch by its own sum(w) would give another gradient.
    model = train_copy("llava")
    collate = RowCollator(proc)
    order = list(torch.utils.data.RandomSampler(rows, generator=torch.Generator().manual_seed(0)))
    for half in (order[:2], order[2:]):
        (cal_loss(model, collate([rows[i] for i in half]), config).loss / 2).backward()
    naive = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    cal_loss(model, collate(rows), config).loss.backward()
    assert any(not torch.allclose(naive[n], p.grad, atol=1e-6) for n, p in model.named_parameters() if n in naive)


def test_evaluate_with_labels_reports_the_cal_loss(tmp_path):
    model = train_copy("llava")
    proc = tm.build("llava")[1]
    rows = sft_rows(proc, 4)
    trainer = trainer_for(model, tmp_path, rows)
    metrics = trainer.evaluate()
    with torch.no_grad():
        expected = cal_loss(model.eval(), RowCollator(proc)(rows)).loss.item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert 1.0 <= metrics["eval_cal/mean_weight"] <= 5.0


def test_predict_with_labels_returns_the_logits_on_the_installed_transformers(tmp_path):
    # transformers 5.24 returns `image_outputs` (lists, None) beside the logits; accelerate cannot pad those.
    model = train_copy("llava")
    proc = tm.build("llava")[1]
    rows = sft_rows(proc, 4)
    trainer = trainer_for(model, tmp_path, rows)
    out = trainer.predict(rows)
    batch = RowCollator(proc)(rows)
    with torch.no_grad():
        expected = cal_loss(model.eval(), batch)
    # Up to 5.23 LLaVA also returns `image_hidden_states` (a tensor), which the Trainer gathers beside the logits.
    predictions = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    torch.testing.assert_close(torch.as_tensor(predictions), expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.as_tensor(out.label_ids), batch["labels"])
    assert out.metrics["test_loss"] == pytest.approx(expected.loss.item(), rel=1e-5)


def test_gatherable_outputs_keeps_tensors_and_drops_caches_and_nested_outputs():
    from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

    logits, hidden = torch.zeros(2, 3, 5), (torch.zeros(2, 3, 4), torch.ones(2, 3, 4))
    nested = BaseModelOutputWithPooling(last_hidden_state=torch.zeros(1), pooler_output=[torch.zeros(1), None])
    outputs = CausalLMOutputWithPast(logits=logits, hidden_states=hidden)
    outputs["image_outputs"] = nested
    outputs["past_key_values"] = (torch.zeros(1),)
    outputs["cache"] = object()
    kept = gatherable_outputs(outputs)
    assert isinstance(kept, CausalLMOutputWithPast) and list(kept.keys()) == ["logits", "hidden_states"]
    assert kept.logits is logits and kept.hidden_states is hidden
    assert list(gatherable_outputs({"logits": logits, "x": None, "y": [logits]})) == ["logits"]


def test_rejects_a_bad_config(tmp_path):
    with pytest.raises(ValueError, match="cal_config"):
        CALTrainer(model=train_copy("llava"), args=args(tmp_path), cal_config={"alpha": 1.0})


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"args": {"label_smoothing_factor": 0.1}}, "label_smoothing_factor"),
        ({"compute_loss_func": lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum()}, "compute_loss"),
    ],
)
def test_refuses_a_loss_option_it_would_ignore(tmp_path, option, match):
    # CAL's compute_loss replaces the Trainer's: label smoothing or a custom loss function would be silently dropped.
    with pytest.raises(ValueError, match=match):
        CALTrainer(
            model=train_copy("llava"),
            args=args(tmp_path, **option.get("args", {})),
            compute_loss_func=option.get("compute_loss_func"),
        )


def test_peft_lora_trains_and_lora_dropout_is_off_in_the_contrast_pass(tmp_path):
    peft = pytest.importorskip("peft")
    model = train_copy("llava")
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, lora)
    model.train()
    proc = tm.build("llava")[1]
    rows = sft_rows(proc, 4)
    batch = RowCollator(proc)(rows)

    dropout = next(m for n, m in model.named_modules() if "language_model" in n and n.endswith("lora_dropout.default"))
    seen = []
    dropout.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    cal_loss(model, batch)
    assert seen == [True, False]  # the training forward with LoRA dropout, the contrast pass without
    assert dropout.training  # restored
    torch.testing.assert_close(cal_deltas(model, batch)[0], cal_deltas(model, batch)[0])

    before = params(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = trainer_for(model, tmp_path, rows, max_steps=2, learning_rate=0.1)
    trainer.train()
    after = params(model)
    assert all("lora_" in n for n in after)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in frozen.items())


def test_logs_the_delta_histogram_and_the_shares_at_the_clamp_bounds(tmp_path):
    from vcontrast.cal.trainer import DELTA_BINS

    model = train_copy("llava")
    proc = tm.build("llava")[1]
    rows = sft_rows(proc, 4)
    config = CALConfig(alpha=0.5, beta=2.0)
    trainer = trainer_for(model, tmp_path, rows, config, max_steps=2)
    metrics = trainer.evaluate()
    with torch.no_grad():
        out = cal_loss(model.eval(), RowCollator(proc)(rows), config)
    delta = out.delta[out.mask]
    edges = [-float("inf"), *DELTA_BINS, float("inf")]
    for lo, hi in itertools.pairwise(edges):
        key = f"eval_cal/delta_hist/{lo:g}_{hi:g}"
        assert metrics[key] == pytest.approx(float(((delta >= lo) & (delta < hi)).float().mean()))
    assert metrics["eval_cal/frac_at_alpha"] == pytest.approx(float((delta <= 0.5).float().mean()))
    assert metrics["eval_cal/frac_at_beta"] == pytest.approx(float((delta >= 2.0).float().mean()))
    assert 0 < metrics["eval_cal/frac_at_alpha"] < 1  # the check can fail both ways

    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2
    for log in logs:  # every logging step carries a whole histogram
        shares = [value for key, value in log.items() if key.startswith("cal/delta_hist/")]
        assert len(shares) == len(DELTA_BINS) + 1 and sum(shares) == pytest.approx(1.0)
        assert 0 <= log["cal/frac_at_alpha"] <= 1 and 0 <= log["cal/frac_at_beta"] <= 1


def test_deepspeed_zero3_is_refused_when_the_trainer_is_built(tmp_path, monkeypatch):
    # DeepSpeed is not installed here: fake the plugin accelerate would hold under ZeRO-3.
    from types import SimpleNamespace

    original = tf.Trainer.create_accelerator_and_postprocess

    def with_zero3(self):
        original(self)
        zero3 = property(lambda state: SimpleNamespace(zero_stage=3))
        monkeypatch.setattr(type(self.accelerator.state), "deepspeed_plugin", zero3)

    monkeypatch.setattr(tf.Trainer, "create_accelerator_and_postprocess", with_zero3)
    with pytest.raises(ValueError, match="does not support DeepSpeed ZeRO-3"):
        CALTrainer(model=train_copy("llava"), args=args(tmp_path))
