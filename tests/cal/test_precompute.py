"""Offline weights (resumable, JSONL and safetensors, consumed with no contrast pass), audits and token reports."""

import copy
import json

import pytest
import torch

from tests import tiny_models as tm
from tests.cal.utils import RowCollator, sft_rows
from vcontrast.cal import (
    CALConfig,
    PrecomputedWeightsCollator,
    audit,
    cal_deltas,
    cal_loss,
    load_weights,
    precompute_weights,
    summarize_audit,
    token_report,
)


def rows(n=5):
    proc = tm.build("llava")[1]
    data = sft_rows(proc, n)
    for i, row in enumerate(data):
        row["id"] = f"s{i}"
    return data


class CountingCollator(RowCollator):
    def __init__(self, proc):
        super().__init__(proc)
        self.seen = []

    def __call__(self, batch):
        self.seen += [r["id"] for r in batch]
        return super().__call__(batch)


@pytest.mark.parametrize("suffix", [".jsonl", ".safetensors"])
def test_precompute_resumes_and_matches_cal_deltas(tmp_path, suffix):
    model, proc = tm.build("llava")
    data = rows()
    path = tmp_path / f"train.cal{suffix}"
    collator = CountingCollator(proc)
    precompute_weights(model, data[:2], collator, path.with_suffix(".jsonl"), batch_size=2, show_progress=False)
    if suffix == ".safetensors":  # resume from the sidecar a killed run leaves
        path.with_suffix(".jsonl").rename(path.with_suffix(".partial.jsonl"))
        with path.with_suffix(".partial.jsonl").open("a") as f:
            f.write('{"id": "s2", "tok')  # a truncated last line
    collator.seen.clear()
    precompute_weights(model, data, collator, path, batch_size=2, show_progress=False)
    assert collator.seen == ["s2", "s3", "s4"]  # the stored samples are skipped
    stored = load_weights(path)
    assert sorted(stored) == [f"s{i}" for i in range(5)]
    delta, mask = cal_deltas(model, RowCollator(proc)(data))
    for b in range(5):
        torch.testing.assert_close(stored[f"s{b}"]["delta"], delta[b][mask[b]], atol=1e-5, rtol=0)
    assert not path.with_suffix(".partial.jsonl").exists()


def test_precomputed_weights_train_without_a_contrast_pass(tmp_path):
    model, proc = tm.build("llava")
    data = rows(4)
    path = precompute_weights(model, data, RowCollator(proc), tmp_path / "w.jsonl", show_progress=False)
    config = CALConfig(alpha=0.5, beta=2.0)  # other hyperparameters than the stored weights': from the deltas
    collate = PrecomputedWeightsCollator(RowCollator(proc), load_weights(path), model, config)
    batch = collate(data)
    model = copy.deepcopy(model)
    calls = []
    model.model.language_model.register_forward_pre_hook(lambda m, a: calls.append(1))
    out = cal_loss(model, batch, config)
    assert len(calls) == 1 and out.delta is None
    plain = {k: v for k, v in batch.items() if k != "cal_weights"}
    expected = cal_loss(model, plain, config)
    torch.testing.assert_close(out.weights, expected.weights, atol=1e-5, rtol=0)
    assert out.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)

    data[0]["answer"] = "no"
    with pytest.raises(ValueError, match="'s0': the label tokens differ"):
        collate(data)
    with pytest.raises(ValueError, match="no precomputed CAL weights for sample id 'x'"):
        collate([{**data[1], "id": "x"}])


def test_trainer_consumes_precomputed_weights(tmp_path):
    from tests.cal.test_trainer import args
    from vcontrast.cal import CALTrainer

    model, proc = tm.build("llava")
    data = rows(4)
    path = precompute_weights(model, data, RowCollator(proc), tmp_path / "w.jsonl", show_progress=False)
    student = copy.deepcopy(model).train()
    calls = []
    student.model.language_model.register_forward_pre_hook(lambda m, a: calls.append(1))
    trainer = CALTrainer(
        model=student,
        args=args(tmp_path, max_steps=2),
        train_dataset=data,
        data_collator=PrecomputedWeightsCollator(RowCollator(proc), load_weights(path), student),
    )
    trainer.train()
    assert len(calls) == 2  # one forward per step: no contrast pass
    assert all("cal/mean_weight" in log for log in trainer.state.log_history if "loss" in log)
    assert not any("cal/mean_delta" in log for log in trainer.state.log_history)  # no gain measured, none logged


def test_audit_sorts_the_most_suspicious_first_and_resumes(tmp_path):
    model, proc = tm.build("llava")
    data = rows(5)
    path = tmp_path / "audit.jsonl"
    collator = CountingCollator(proc)
    audit(model, data[:3], collator, path, show_progress=False)
    collator.seen.clear()
    records = audit(model, data, collator, path, batch_size=2, show_progress=False)
    assert collator.seen == ["s3", "s4"]
    assert sorted(r["id"] for r in records) == [f"s{i}" for i in range(5)]
    fractions = [r["frac_negative"] for r in records]
    assert fractions == sorted(fractions, reverse=True)
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [r["id"] for r in records]
    delta, mask = cal_deltas(model, RowCollator(proc)(data))
    by_id = {r["id"]: r for r in records}
    for b in range(5):
        d = delta[b][mask[b]]
        assert by_id[f"s{b}"]["mean_delta"] == pytest.approx(float(d.mean()), abs=1e-5)
        assert by_id[f"s{b}"]["frac_negative"] == pytest.approx(float((d < 0).float().mean()), abs=1e-6)
    summary = summarize_audit(records)
    assert summary["samples"] == 5 and summary["tokens"] == int(mask.sum())
    assert summary["frac_negative"] == pytest.approx(float((delta[mask] < 0).float().mean()))


def test_duplicate_ids_and_bad_batch_size_raise(tmp_path):
    model, proc = tm.build("llava")
    data = rows(2)
    data[1]["id"] = "s0"
    with pytest.raises(ValueError, match="not unique"):
        audit(model, data, RowCollator(proc), tmp_path / "a.jsonl", show_progress=False)
    with pytest.raises(ValueError, match="`batch_size` \\(=0\\)"):
        audit(model, rows(2), RowCollator(proc), tmp_path / "a.jsonl", batch_size=0, show_progress=False)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_token_report_and_renderings(family):
    from vcontrast.viz import token_heatmap_ansi, token_heatmap_html

    model, proc = tm.build(family)
    report = token_report(model, proc, tm.image(0), "a red cup is left of the plate", prompt="describe the picture .")
    assert [t.text.strip() for t in report] == ["a", "red", "cup", "is", "left", "of", "the", "plate"]
    assert all(1.0 <= t.weight <= 5.0 for t in report)
    assert any(t.delta != 0 for t in report)
    tokens, weights = [t.text.strip() for t in report], [t.weight for t in report]
    text = token_heatmap_ansi(tokens, weights)
    assert "\x1b[48;2;" in text and "plate" in text
    page = token_heatmap_html(tokens, weights)
    assert page.startswith("<!doctype html>") and page.count("<span") == len(report)
