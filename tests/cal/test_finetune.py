"""`vcontrast train` / `finetune`: a few real Trainer steps on a tiny toy VLM from a LLaVA-style JSONL file, with CAL
and with MLE; checkpoints, exact resume, a final model that `load_model` reads, and clear errors."""

import shutil

import pytest
import torch

from tests.cal.conversations import run, save_toy_model, write_data
from vcontrast.models.loading import load_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_toy_model(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path)


def train_args(data, model_dir, out, *extra):
    return ("train", "--data", data, "--model", model_dir, "--output-dir", out, "--lr", "1e-2", "--batch-size", "2",
            "--save-steps", "1", "--logging-steps", "1", *extra)  # fmt: skip


def state(folder):
    model, _ = load_model(folder)
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed(before, after):
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("method", ["cal", "mle"])
def test_train_writes_checkpoints_and_a_loadable_model(tmp_path, data, model_dir, method):
    out = tmp_path / "run"
    result = run(*train_args(data, model_dir, out, "--method", method, "--max-steps", "2"))
    assert f"trained 2 steps ({method})" in result.stdout
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    model, processor = load_model(out)  # model + processor saved with save_pretrained
    assert type(model).__name__ == "LlavaForConditionalGeneration" and processor.chat_template
    assert changed(state(model_dir), state(out))
    logged = (out / "trainer_state.json").read_text()
    assert ("cal/mean_weight" in logged) == (method == "cal")


def test_resume_continues_to_the_uninterrupted_result(tmp_path, data, model_dir):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(*train_args(data, model_dir, full, "--max-steps", "3", "--grad-accum", "2"))
    # A run killed after its second checkpoint: only checkpoint-2 is on disk.
    cut.mkdir()
    shutil.copytree(full / "checkpoint-2", cut / "checkpoint-2")
    refused = run(*train_args(data, model_dir, cut, "--max-steps", "3", "--grad-accum", "2"), code=2).output
    assert "already holds checkpoint-2: resume from it" in refused  # nothing is overwritten without --resume
    result = run(*train_args(data, model_dir, cut, "--max-steps", "3", "--grad-accum", "2", "--resume"))
    assert "trained 3 steps" in result.stdout
    # Exact: transformers' own resume would restart from the initial weights here (see finetune._restore_weights).
    expected, resumed = state(full), state(cut)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], msg=key)


def test_train_with_precomputed_weights(tmp_path, data, model_dir):
    weights = tmp_path / "w.cal.jsonl"
    run("cal", "precompute", data, "--model", model_dir, "--out", weights, "--no-progress")
    out = tmp_path / "run"
    run(*train_args(data, model_dir, out, "--max-steps", "1", "--cal-weights", weights))
    assert changed(state(model_dir), state(out))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--method", "sgd"), "`--method` (='sgd') has to be one of cal, mle"),
        (("--method", "mle", "--cal-weights", "w.jsonl"), "only applies to --method cal"),
        (("--beta", "0.5"), "`beta` (=0.5)"),
        (("--max-length", "70"), "no assistant token left within `max_length` (=70)"),  # every label cut off
        (("--cal-weights", "nope.jsonl"), "no precomputed CAL weights at nope.jsonl"),
    ],
)
def test_train_bad_input(tmp_path, data, model_dir, extra, message):
    assert message in run(*train_args(data, model_dir, tmp_path / "run", "--max-steps", "1", *extra), code=2).output


def test_train_missing_image(tmp_path, data, model_dir):
    (data.parent / "images" / "green.png").unlink()
    result = run(*train_args(data, model_dir, tmp_path / "run", "--max-steps", "1"), code=2)
    assert "data.jsonl:3: image file" in result.output and "green.png' not found" in result.output
