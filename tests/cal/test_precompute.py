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
from vcontrast.cal import precompute as precompute_module
from vcontrast.cal.precompute import provenance
from vcontrast.cal.show import _prefix
from vcontrast.candidates import candidate_tokens


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
    audit(model, data[:3], collator, path, show_progress=False, tokenizer=proc)
    collator.seen.clear()
    records = audit(model, data, collator, path, batch_size=2, show_progress=False, tokenizer=proc)
    assert collator.seen == ["s3", "s4"]
    assert sorted(r["id"] for r in records) == [f"s{i}" for i in range(5)]
    fractions = [r["frac_negative"] for r in records]
    assert fractions == sorted(fractions, reverse=True)
    header, *lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert "vcontrast_cal" in header and [line["id"] for line in lines] == [r["id"] for r in records]
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
        audit(model, data, RowCollator(proc), tmp_path / "a.jsonl", show_progress=False, tokenizer=proc)
    with pytest.raises(ValueError, match="`batch_size` \\(=0\\)"):
        audit(
            model, rows(2), RowCollator(proc), tmp_path / "a.jsonl", batch_size=0, show_progress=False, tokenizer=proc
        )
    with pytest.raises(ValueError, match="needs the tokenizer"):
        audit(model, rows(2), RowCollator(proc), tmp_path / "a.jsonl", show_progress=False)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_token_report_and_renderings(family):
    from vcontrast.viz import token_heatmap_ansi, token_heatmap_html

    model, proc = tm.build(family)
    report = token_report(model, proc, tm.image(0), "a red cup is left of the plate", prompt="describe the picture .")
    assert [t.text.strip() for t in report] == ["a", "red", "cup", "is", "left", "of", "the", "plate"]
    # The scored tokens are the model's own answer tokens after the prompt (the candidate rule): a space-prefixed
    # `a` after LLaVA's `ASSISTANT:`, the bare `a` after Qwen's `assistant\n`.
    prefix = _prefix(proc, "describe the picture .")
    (expected,) = candidate_tokens(proc, prefix, ["a red cup is left of the plate"])
    assert tuple(t.token_id for t in report) == expected.ids
    assert all(1.0 <= t.weight <= 5.0 for t in report)
    assert any(t.delta != 0 for t in report)
    tokens, weights = [t.text.strip() for t in report], [t.weight for t in report]
    text = token_heatmap_ansi(tokens, weights)
    assert "\x1b[48;2;" in text and "plate" in text
    page = token_heatmap_html(tokens, weights)
    assert page.startswith("<!doctype html>") and page.count("<span") == len(report)


def _header(path):
    return json.loads(path.read_text().splitlines()[0])["vcontrast_cal"]


def test_provenance_records_model_contrast_params_and_tokenizer(tmp_path):
    model, proc = tm.build("llava")
    path = precompute_weights(
        model,
        rows(2),
        RowCollator(proc),
        tmp_path / "w.jsonl",
        CALConfig(beta=3.0),
        tokenizer=proc,
        show_progress=False,
    )
    meta = _header(path)
    assert meta == provenance(model, CALConfig(beta=3.0), proc.tokenizer, processor=proc)
    assert {"model_config", "model_weights", "tokenizer"} <= set(meta) and meta["image_backend"] == "pil"
    assert (meta["contrast"], meta["alpha"], meta["beta"], meta["window"]) == ("none", 1.0, 3.0, 3)
    # The fingerprints see a changed weight, config or vocabulary.
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight[0, 0] += 1.0
    assert provenance(other)["model_weights"] != meta["model_weights"]
    assert provenance(tm.build("qwen2_vl")[0])["model_config"] != meta["model_config"]
    assert provenance(tokenizer=tm.build("qwen2_vl")[1])["tokenizer"] != meta["tokenizer"]
    assert provenance(copy.deepcopy(model))["model_weights"] == meta["model_weights"]


@pytest.mark.parametrize(
    "change, named",
    [
        ({"config": CALConfig(alpha=0.5)}, "alpha"),
        ({"config": CALConfig(contrast="attention_mask")}, "contrast"),
        ({"model": "other"}, "model weights"),
        ({"tokenizer": "other"}, "tokenizer"),
    ],
)
@pytest.mark.parametrize("run", ["precompute", "audit"])
def test_resume_with_another_run_is_refused_naming_what_differs(tmp_path, change, named, run):
    model, proc = tm.build("llava")
    fn = precompute_weights if run == "precompute" else audit
    path = tmp_path / "w.jsonl"
    fn(model, rows(2), RowCollator(proc), path, show_progress=False, tokenizer=proc)
    before = path.read_text()
    kwargs = {"config": CALConfig(), "tokenizer": proc, "model": model}
    kwargs.update(change)
    if kwargs["model"] == "other":
        kwargs["model"] = tm.build("llava", 1)[0]
    if kwargs["tokenizer"] == "other":
        kwargs["tokenizer"] = tm.build("qwen2_vl")[1]
    with pytest.raises(ValueError, match=f"another .*{named}") as error:
        fn(
            kwargs["model"],
            rows(4),
            RowCollator(proc),
            path,
            kwargs["config"],
            show_progress=False,
            tokenizer=kwargs["tokenizer"],
        )
    assert str(path) in str(error.value)
    assert path.read_text() == before  # nothing appended


@pytest.mark.parametrize("run", ["precompute", "audit"])
def test_resume_on_the_other_image_backend_is_refused_and_older_files_resume(tmp_path, monkeypatch, caplog, run):
    model, proc, fn, path, header, lines = _written_file(tmp_path, run)
    # the same data on a machine where transformers loads the torchvision image processor: refused, file untouched
    with monkeypatch.context() as patch:
        patch.setattr(precompute_module, "image_backend_of", lambda processor: "torchvision")
        with pytest.raises(ValueError, match="another image_backend .*file 'pil' != 'torchvision'"):
            fn(model, rows(4), RowCollator(proc), path, show_progress=False, tokenizer=proc)
    assert path.read_text().splitlines() == lines
    # a file written before the backend was recorded resumes, saying what it takes it for
    message = "written before vcontrast recorded image_backend; taking it as computed with image_backend='pil'"
    _resumes_as_older_file(fn, (model, proc), path, (header, lines), ["image_backend"], message, caplog)


def _written_file(tmp_path, run):
    # A precompute (or audit) file of 2 records on the tiny LLaVA: what the resume tests start from.
    model, proc = tm.build("llava")
    fn = precompute_weights if run == "precompute" else audit
    path = tmp_path / "w.jsonl"
    fn(model, rows(2), RowCollator(proc), path, show_progress=False, tokenizer=proc)
    lines = path.read_text().splitlines()
    return model, proc, fn, path, json.loads(lines[0]), lines


def _resumes_as_older_file(fn, loaded, path, written, fields, message, caplog):
    # The file as an older vcontrast wrote it (without `fields` in its header) resumes with a warning, and the run
    # appends the missing records (2 written, 4 wanted).
    (model, proc), (header, lines) = loaded, written
    for field in fields:
        del header["vcontrast_cal"][field]
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with caplog.at_level("WARNING", logger="vcontrast.cal.precompute"):
        fn(model, rows(4), RowCollator(proc), path, show_progress=False, tokenizer=proc)
    assert message in caplog.text
    assert len(path.read_text().splitlines()) == 1 + 4


def _other_template(proc):
    proc.chat_template = proc.chat_template.replace("ASSISTANT:", "ASSISTANT :")


def _other_resolution(proc):
    proc.image_processor.size = {"shortest_edge": 24}
    proc.image_processor.crop_size = {"height": 24, "width": 24}


@pytest.mark.parametrize(
    "change, key, named",
    [
        (_other_template, "chat_template", "chat template"),
        (_other_resolution, "image_processor", "image-processor settings"),
    ],
)
@pytest.mark.parametrize("run", ["precompute", "audit"])
def test_resume_with_another_processor_setting_is_refused_and_older_files_resume(
    tmp_path, caplog, change, key, named, run
):
    # The vocabulary alone does not say how a record becomes tokens and pixels: a changed chat template or image
    # resolution gives other gains, which a resume must not mix into the file.
    model, proc, fn, path, header, lines = _written_file(tmp_path, run)
    assert {"chat_template", "image_processor"} <= set(header["vcontrast_cal"])
    other = copy.deepcopy(proc)
    change(other)
    assert provenance(processor=other)[key] != header["vcontrast_cal"][key]
    with pytest.raises(ValueError, match=f"another {named} \\({key}: file '"):
        fn(model, rows(4), RowCollator(other), path, show_progress=False, tokenizer=other)
    assert path.read_text().splitlines() == lines  # nothing appended
    # a file written before these were recorded resumes, naming the fields it could not check
    message = "written before vcontrast recorded chat_template and image_processor; taking it as computed with"
    fields = ["chat_template", "image_processor"]
    _resumes_as_older_file(fn, (model, proc), path, (header, lines), fields, message, caplog)


def test_load_checks_what_it_is_given_and_refuses_files_without_provenance(tmp_path):
    model, proc = tm.build("llava")
    for suffix in (".jsonl", ".safetensors"):
        path = precompute_weights(
            model, rows(2), RowCollator(proc), tmp_path / f"w{suffix}", show_progress=False, tokenizer=proc
        )
        assert sorted(load_weights(path, model=model, contrast="none", tokenizer=proc.tokenizer)) == ["s0", "s1"]
        with pytest.raises(ValueError, match="another tokenizer"):
            load_weights(path, tokenizer=tm.build("qwen2_vl")[1])
        with pytest.raises(ValueError, match="another .*model weights"):
            load_weights(path, model=tm.build("llava", 1)[0])
        with pytest.raises(ValueError, match="another contrast"):
            load_weights(path, contrast="patch:0.5")
    old = tmp_path / "old.jsonl"
    old.write_text("".join(line + "\n" for line in (tmp_path / "w.jsonl").read_text().splitlines()[1:]))
    assert sorted(load_weights(old)) == ["s0", "s1"]  # nothing expected, nothing checked
    with pytest.raises(ValueError, match="no provenance"):
        load_weights(old, tokenizer=proc)
    with pytest.raises(ValueError, match="no provenance"):
        precompute_weights(model, rows(3), RowCollator(proc), old, show_progress=False)


def test_audit_leaves_out_template_tokens_and_lists_the_contradicted_ones(tmp_path):
    # ConversationCollator labels each answer and the template's end-of-turn `</s>` after it.
    from tests.cal.conversations import TINY, toy_processor, write_data
    from vcontrast.cal import ConversationCollator, read_conversations
    from vcontrast.cal.precompute import template_token_mask
    from vcontrast.toy.model import build_model

    torch.manual_seed(0)
    proc = toy_processor()
    model = build_model(proc, **TINY).eval()
    examples = read_conversations(write_data(tmp_path))
    collate = ConversationCollator(proc)
    records = {r["id"]: r for r in audit(model, examples, collate, tmp_path / "a.jsonl", show_progress=False)}

    eos = proc.tokenizer.convert_tokens_to_ids("</s>")
    batch = collate(examples)
    delta, mask = cal_deltas(model, batch)
    template = template_token_mask(proc, batch["input_ids"], mask)
    assert torch.equal(template, mask & (batch["input_ids"] == eos))  # exactly the end-of-turn tokens
    for b, example in enumerate(examples):
        record = records[example["id"]]
        content = mask[b] & ~template[b]
        d, ids = delta[b][content], batch["input_ids"][b][content]
        assert record["n_template"] == int(template[b].sum()) >= 1
        assert record["n_tokens"] == int(content.sum())
        if record["n_tokens"]:
            assert record["mean_delta"] == pytest.approx(float(d.mean()), abs=1e-5)
            assert record["frac_negative"] == pytest.approx(float((d < 0).float().mean()), abs=1e-6)
        expected = [(i, proc.tokenizer.decode([int(ids[i])])) for i in range(len(d)) if d[i] < 0]
        assert [(c["position"], c["text"]) for c in record["contradicted"]] == expected
        assert all(c["delta"] < 0 and "</s>" not in c["text"] for c in record["contradicted"])
    assert any(r["contradicted"] for r in records.values())  # the random model argues against some tokens
