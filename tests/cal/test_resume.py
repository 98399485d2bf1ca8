"""`vcontrast train --resume` after a run killed while writing a checkpoint: the incomplete checkpoint is skipped
with a one-line notice, no wall of key names, and the training loss covers every step, as in an uninterrupted run."""

import logging
import re
import shutil

import pytest
import torch

from tests.cal.conversations import run, save_toy_model, write_data
from tests.cal.test_finetune import state, train_args
from vcontrast.cal.finetune import last_complete_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_toy_model(tmp_path_factory.mktemp("toy"))


def final_loss(output: str) -> float:
    return float(re.search(r"final training loss (\S+)", output).group(1))


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_resume_skips_incomplete_checkpoint_and_reports_loss_over_all_steps(tmp_path, model_dir, caplog):
    data = write_data(tmp_path)
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ("--max-steps", "3", "--grad-accum", "2", "--logging-steps", "2")  # logs at 2, 3: not every save step
    uninterrupted = run(*train_args(data, model_dir, full, *args))
    # Killed while writing checkpoint-3: its weights are there, its trainer_state.json is not.
    cut.mkdir()
    shutil.copytree(full / "checkpoint-2", cut / "checkpoint-2")
    shutil.copytree(full / "checkpoint-3", cut / "checkpoint-3")
    (cut / "checkpoint-3" / "trainer_state.json").unlink()
    trainer_logs = Records()  # transformers' loggers do not propagate to pytest's caplog
    logging.getLogger("transformers.trainer").addHandler(trainer_logs)
    try:
        with caplog.at_level(logging.WARNING):
            resumed = run(*train_args(data, model_dir, cut, *args, "--resume"))
    finally:
        logging.getLogger("transformers.trainer").removeHandler(trainer_logs)
    notices = [r.getMessage() for r in caplog.records if "checkpoint-3" in r.getMessage()]
    assert notices == ["skipping checkpoint-3: incomplete (no trainer_state.json; the run stopped while writing it)"]
    assert not [m for m in trainer_logs.messages if "keys in the checkpoint" in m]  # no wall of key names
    assert "trained 3 steps" in resumed.stdout
    expected, got = state(full), state(cut)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)
    # Over all 3 steps, as the uninterrupted run reports (not the mean of the one resumed step).
    assert final_loss(resumed.stdout) == pytest.approx(final_loss(uninterrupted.stdout), rel=1e-5)


def test_last_complete_checkpoint(tmp_path, caplog):
    assert last_complete_checkpoint(tmp_path) is None
    for step in (2, 10, 11):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # 10 > 2 numerically
    assert [r.getMessage() for r in caplog.records] == [
        "skipping checkpoint-11: incomplete (no trainer_state.json; the run stopped while writing it)"
    ]


def test_failed_precompute_leaves_nothing(tmp_path, model_dir):
    data = write_data(tmp_path)
    out = tmp_path / "new" / "w.safetensors"
    # Every label cut off by --max-length: the first batch fails.
    result = run("cal", "precompute", data, "--model", model_dir, "--out", out, "--max-length", "70", code=2)
    assert "max_length" in result.output
    assert not (tmp_path / "new").exists()
