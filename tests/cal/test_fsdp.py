"""CAL under FSDP on 2 CPU processes (gloo): gains, loss and the rescaled gradients equal one unsharded process.

Under FSDP the output head's weight is a shard outside the model's forward; CAL scores the gold tokens inside the
forward, through the head module, so the gains are those of the whole head. See `fsdp_script.py` for the setup.
"""

import pytest
import torch

from tests.cal.fsdp_script import CONFIG, rows, setup
from tests.cal.utils import ROOT, launch
from vcontrast.cal import cal_deltas, cal_loss


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2", "1"])
def test_two_process_fsdp_equals_one_unsharded_process(tmp_path, version):
    script = str(ROOT / "tests" / "cal" / "fsdp_script.py")
    proc = launch("torchrun", ["--standalone", "--nproc_per_node", "2", script, str(tmp_path), version])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]

    model, batch = setup()
    full = cal_loss(model, batch, CONFIG)
    full.loss.backward()
    for rank, result in enumerate(ranks):
        local = cal_loss(model, rows(batch, rank), CONFIG)
        torch.testing.assert_close(result["delta"], local.delta, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["eval_delta"], cal_deltas(model, rows(batch, rank), CONFIG)[0])
        assert result["loss"] == pytest.approx(full.loss.item(), rel=1e-5)
    expected = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    sharded = ranks[0]["grads"]
    assert set(expected) <= set(sharded) and "lm_head.weight" in expected
    # FSDP1 gives parameters the forward never used (the tower's last norm) a zero gradient instead of none.
    assert all(not sharded[name].any() for name in set(sharded) - set(expected))
    for name, grad in expected.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_deepspeed_zero3_partitioned_head_is_refused():
    # DeepSpeed is not installed here; ZeRO-3 marks each partitioned parameter with a `ds_id`.
    model, batch = setup()
    model.lm_head.weight.ds_id = 0
    for run in (cal_loss, cal_deltas):
        with pytest.raises(ValueError, match="ZeRO-3"):
            run(model, batch, CONFIG)
