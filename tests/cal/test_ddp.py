"""CALTrainer on 2 CPU processes under `accelerate launch` (DDP over gloo): both ranks agree, and the step equals one
single-process step on the union of their batches (the normalisation spans the devices).

accelerate 1.15 starts a single process for `--cpu --num_processes 2` unless `mpirun` is installed (its simple
launcher), so the test launches through torchrun with `--multi_gpu`; the script's `use_cpu=True` keeps the run on
the CPU, where accelerate's distributed type is MULTI_CPU and the process group gloo.
"""

import json

import pytest
import torch

from tests.cal.utils import ROOT, free_port, launch


def test_two_process_ddp_step_matches_a_single_big_batch(tmp_path):
    pytest.importorskip("accelerate")
    script = str(ROOT / "tests" / "cal" / "ddp_script.py")
    cmd = ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += [
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        script,
        str(tmp_path),
    ]
    proc = launch("accelerate", cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["backend"] for r in ranks] == ["gloo", "gloo"]
    loss = [[log["loss"] for log in r["log_history"] if "loss" in log] for r in ranks]
    assert loss[0] == loss[1] and len(loss[0]) == 1
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)

    # One process, one batch of all 4 rows: the same update and the same logged loss.
    from tests.cal.ddp_script import train

    model, trainer = train(str(tmp_path / "single"), batch_size=4)
    ddp_params = torch.load(tmp_path / "params.pt")
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), ddp_params[name], atol=1e-5, rtol=1e-4, msg=name)
    single_loss = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert single_loss[0] == pytest.approx(loss[0][0], rel=1e-5)

    # Evaluation over both ranks reports the cal/* metrics of the 3 rows, not of accelerate's padded 4.
    from tests.cal.ddp_script import evaluate

    single_eval = evaluate(trainer)
    for key in ("eval_cal/mean_weight", "eval_cal/mean_delta", "eval_cal/frac_negative_delta"):
        assert ranks[0]["eval"][key] == ranks[1]["eval"][key] == pytest.approx(single_eval[key], rel=1e-4), key
