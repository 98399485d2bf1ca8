"""The model fingerprint (`vcontrast.models.identity`): the same model hashes the same whether built in memory, saved
or loaded from disk, and files written with the hash of an older vcontrast (which covered `architectures`, a field
`save_pretrained` fills in) still resume, while another model's old hash is still refused."""

import copy
import hashlib
import json

import pytest
import torch
from transformers import AutoModelForImageTextToText

from tests import tiny_models as tm
from tests.bench.test_runner_model import toy_items
from tests.cal.test_precompute import rows
from tests.cal.utils import RowCollator
from vcontrast.bench.runner import RUN_FILE, evaluate
from vcontrast.cal import precompute_weights
from vcontrast.models.identity import backfill_model_config, model_fingerprint


def old_config_hash(model, architectures) -> str:
    # The hash as vcontrast wrote it until 2026-11-28, written out the slow way: every config entry but paths,
    # versions and run settings, `architectures` included, serialised and hashed.
    dropped = {"transformers_version", "dtype", "torch_dtype", "use_cache", "output_attentions"}
    dropped |= {"output_hidden_states", "return_dict", "pad_token_id"}

    def keep(value):
        if isinstance(value, dict):
            return {k: keep(v) for k, v in value.items() if not str(k).startswith("_") and k not in dropped}
        return value

    config = {**model.config.to_dict(), "architectures": architectures}
    return hashlib.sha256(json.dumps(keep(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_saving_and_loading_do_not_change_the_fingerprint(tmp_path):
    model = copy.deepcopy(tm.build("llava")[0])
    assert model.config.architectures is None  # built in memory
    before = model_fingerprint(model)
    model.save_pretrained(tmp_path)
    assert model.config.architectures == ["LlavaForConditionalGeneration"]
    assert model_fingerprint(model) == before
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert model_fingerprint(loaded) == before
    # what it still tells apart: another config, other weights
    assert model_fingerprint(tm.build("qwen2_vl")[0])["model_config"] != before["model_config"]
    with torch.no_grad():
        loaded.lm_head.weight[0, 0] += 1.0
    assert model_fingerprint(loaded)["model_weights"] != before["model_weights"]


@pytest.mark.parametrize("architectures", [None, ["LlavaForConditionalGeneration"]])
def test_an_old_hash_of_the_same_config_is_brought_up_to_date(tmp_path, caplog, architectures):
    model = tm.build("llava")[0]
    current = model_fingerprint(model)
    old = {**current, "model_config": old_config_hash(model, architectures)}
    assert old["model_config"] != current["model_config"]
    with caplog.at_level("WARNING", logger="vcontrast.models.identity"):
        assert backfill_model_config(old, model, tmp_path / "f", "taking it as") == current
    assert "model-config hash of an older vcontrast" in caplog.text and str(tmp_path / "f") in caplog.text
    other = tm.build("qwen2_vl")[0]
    foreign = {**current, "model_config": old_config_hash(other, architectures)}
    assert backfill_model_config(foreign, model, tmp_path / "f", "taking it as") == foreign  # left to be refused
    assert backfill_model_config(old, None, tmp_path / "f", "taking it as") == old


def _rewrite_header(path, **fields):
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["vcontrast_cal"].update(fields)
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")


def test_precomputed_gains_with_an_old_hash_resume_and_another_models_are_refused(tmp_path, caplog):
    model, proc = tm.build("llava")
    path = tmp_path / "w.jsonl"
    precompute_weights(model, rows(2), RowCollator(proc), path, show_progress=False, tokenizer=proc)
    _rewrite_header(path, model_config=old_config_hash(model, None))  # as an older vcontrast wrote it
    with caplog.at_level("WARNING", logger="vcontrast.models.identity"):
        precompute_weights(model, rows(4), RowCollator(proc), path, show_progress=False, tokenizer=proc)
    assert len(path.read_text().splitlines()) == 1 + 4 and "older vcontrast" in caplog.text
    _rewrite_header(path, model_config=old_config_hash(tm.build("qwen2_vl")[0], None))
    with pytest.raises(ValueError, match="another model config"):
        precompute_weights(model, rows(5), RowCollator(proc), path, show_progress=False, tokenizer=proc)


def test_an_eval_run_with_an_old_hash_resumes(tmp_path, caplog):
    data, out = toy_items(tmp_path / "data"), tmp_path / "out"
    common = {"method": "base", "batch_size": 4, "show_progress": False, "max_new_tokens": 3}
    model, processor = tm.build("llava")
    evaluate("toy", data, model=(model, processor), out_dir=out, limit=1, **common)
    record = json.loads((out / RUN_FILE).read_text())
    record["model"]["model_config"] = old_config_hash(model, None)
    (out / RUN_FILE).write_text(json.dumps(record))
    with caplog.at_level("WARNING", logger="vcontrast.models.identity"):
        summary = evaluate("toy", data, model=(model, processor), out_dir=out, limit=2, **common)
    assert summary["n_items"] == 2 and "older vcontrast" in caplog.text
    record["model"]["model_config"] = old_config_hash(tm.build("qwen2_vl")[0], None)
    (out / RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="model.model_config"):
        evaluate("toy", data, model=(model, processor), out_dir=out, limit=2, **common)
