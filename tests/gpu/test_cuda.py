"""CRG and CAL on a CUDA GPU: exact against brute force in float32, close to the CPU's float32 results in bf16/fp16.

Marked `gpu` (deselected by default; `make test-gpu` or `pytest -m gpu`) and skipped without a CUDA device. The CPU
suite checks the methods against brute force; these tests check that nothing in them depends on the CPU (a mask or
index built on the wrong device, a log-softmax left in half precision, an overflow in fp16) and that half precision
stays near the float32 answer. Tolerances are for tiny random models whose log-probabilities are a few nats.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import transformers as tf

from tests import tiny_models as tm
from tests.cal.utils import RowCollator, cal_batch, scaled, sft_rows, train_copy
from tests.crg import brute
from tests.crg.test_generation import image_token, special_tokens
from vcontrast.cal import CALConfig, CALTrainer, cal_deltas, cal_loss, cal_weights
from vcontrast.crg import CRG, two_stream_generate
from vcontrast.models.loading import load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

HALF = [torch.bfloat16, torch.float16]
# Allowed |half - float32|: of a summed candidate score, (atol, rtol) in nats and relative to the score; of a
# CAL logit gain, relative to the largest gain of the batch. About twice the largest errors of the same
# half-precision arithmetic on the CPU over these families (bf16: 2.7% of a score, 4.7% of the largest gain;
# fp16: 0.5%, 1.3%).
SCORE_TOL = {torch.bfloat16: (0.1, 0.05), torch.float16: (0.02, 0.01)}
DELTA_TOL = {torch.float32: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.025}
# Families covered here: one of each kind of image handling (fixed grid, dynamic resolution with M-RoPE, image
# splitting, bidirectional image attention, pixel shuffle).
FAMILIES = [
    f for f in ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3", "paligemma", "internvl") if f in tm.FAMILIES
]
PROMPT = "which colour is the cup left of the plate ?"
REGIONS = [(2, 2, 12, 10)]
CANDIDATES = ["red", "blue plate", "a small green triangle"]


def on_cuda(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A copy of the cached CPU model on the GPU in `dtype` (the cached one stays on the CPU for the reference)."""
    return copy.deepcopy(model).to("cuda", dtype=dtype).eval()


def batch_on_cuda(batch: dict, dtype: torch.dtype) -> dict:
    return {
        k: v.to("cuda", dtype=dtype if v.is_floating_point() else None) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 on the GPU at float32 precision: cuDNN runs convolutions in TF32 by default, which put Qwen2-VL's
    Conv3d patch embedding (and so its scores) 3e-4 relative away from the CPU (measured on an H200)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_crg_greedy_on_gpu_matches_brute_force(family):
    """float32 on the GPU: CRG greedy decoding (both streams batched) gives brute force's tokens exactly."""
    model, processor = tm.build(family)
    gpu = on_cuda(model)
    inputs = CRG(gpu, processor, alpha=1.0).prepare([tm.image(0)], [PROMPT], [REGIONS])
    assert inputs.reference["input_ids"].device.type == "cuda"
    eos, pad = special_tokens(gpu, processor)
    banned = [image_token(gpu)]
    expected = brute.greedy(gpu, inputs.reference, inputs.contrast, 1.0, 3, eos, pad, banned)
    kwargs = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": pad, "suppress_tokens": banned}
    out = two_stream_generate(gpu, inputs.reference, inputs.contrast, 1.0, **kwargs)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_crg_scores_in_half_precision_match_cpu_float32(family, dtype):
    model, processor = tm.build(family)
    image = tm.image(0)
    expected = CRG(model, processor, alpha=1.0).score(image, PROMPT, CANDIDATES, regions=REGIONS)
    gpu = CRG(on_cuda(model, dtype), processor, alpha=1.0)
    got = gpu.score(image, PROMPT, CANDIDATES, regions=REGIONS)
    assert all(torch.isfinite(torch.tensor(got)))
    print(f"{family} {dtype}: CRG scores {got} on the GPU, {expected} on the CPU in float32")
    assert got == pytest.approx(expected, abs=SCORE_TOL[dtype][0], rel=SCORE_TOL[dtype][1])
    # The same in float32 on the GPU: agreement to float32 rounding.
    got32 = CRG(on_cuda(model), processor, alpha=1.0).score(image, PROMPT, CANDIDATES, regions=REGIONS)
    assert got32 == pytest.approx(expected, rel=2e-5, abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
def test_cal_deltas_on_gpu_match_cpu_float32(family, dtype):
    """CAL's logit gains on the GPU (the no-image pass included) agree with the CPU's float32 gains, which the CPU
    suite checks against the attention-mask brute force; the label mask is the same token for token."""
    model, _, batch = cal_batch(family)
    model = scaled(model, 4.0)  # gains of several nats, beyond CAL's clamp
    expected, mask = cal_deltas(model, batch)
    gpu = on_cuda(model, dtype)
    got, gpu_mask = cal_deltas(gpu, batch_on_cuda(batch, dtype))
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert torch.equal(gpu_mask.cpu(), mask)
    largest = expected[mask].abs().max().item()
    assert largest > 2.0  # the comparison is over gains that matter
    diff = (got.cpu() - expected)[mask].abs().max().item()
    print(f"{family} {dtype}: CAL gains, max |gpu - cpu fp32| = {diff:.4f} (largest gain {largest:.2f})")
    assert diff <= DELTA_TOL[dtype] * largest
    weights = cal_weights(gpu, batch_on_cuda(batch, dtype))[mask]
    assert torch.isfinite(weights).all() and weights.min() >= 1.0 and weights.max() <= 5.0


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cal_loss_backward_in_half_precision(dtype):
    """A CAL training step in pure half precision: finite loss and gradients, loss close to the CPU float32 loss."""
    model, _, batch = cal_batch("llava")
    model = scaled(model, 4.0)
    expected = cal_loss(model, batch).loss.item()
    gpu = on_cuda(model, dtype).train()
    out = cal_loss(gpu, batch_on_cuda(batch, dtype))
    out.loss.backward()
    grads = [p.grad for p in gpu.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert out.loss.item() == pytest.approx(expected, rel=0.05)


def test_cal_trainer_bf16_mixed_precision_on_gpu(tmp_path):
    """CALTrainer with `bf16=True` (autocast, float32 master weights) trains on the GPU; its first logged loss is
    the CPU float32 trainer's within bf16 rounding."""
    proc = tm.build("llava")[1]
    rows = sft_rows(proc, 4)
    losses = {}
    for device in ("cpu", "cuda"):
        model = train_copy("llava")
        args = tf.TrainingArguments(
            output_dir=str(tmp_path / device), report_to="none", use_cpu=device == "cpu", bf16=device == "cuda",
            save_strategy="no", logging_steps=1, disable_tqdm=True, remove_unused_columns=False,
            per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2, seed=0,
        )  # fmt: skip
        trainer = CALTrainer(
            model=model, args=args, train_dataset=rows, data_collator=RowCollator(proc), cal_config=CALConfig()
        )
        trainer.train()
        assert next(model.parameters()).device.type == device
        losses[device] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses["cuda"]) == 2 and all(torch.isfinite(torch.tensor(losses["cuda"])))
    assert losses["cuda"][0] == pytest.approx(losses["cpu"][0], rel=0.03)


def test_load_model_on_cuda_in_bfloat16(tmp_path):
    """`load_model(path, dtype=, device=)` on a checkpoint we save ourselves puts every weight on the GPU in bf16."""
    tm.save_checkpoint(tmp_path)
    loaded, _ = load_model(tmp_path, dtype="bfloat16", device="cuda")
    assert {p.device.type for p in loaded.parameters()} == {"cuda"}
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_toy_model_on_gpu_matches_cpu(tmp_path):
    """The shipped toy model: CRG scores in bf16 on the GPU near the CPU's, and `vcontrast ask --device cuda` runs."""
    cpu_model, processor = load_model()
    gpu_model, _ = load_model(dtype="bfloat16", device="cuda")
    image = tm.image(3, size=(64, 64))
    prompt, candidates, regions = "what colour is the circle ?", ["red", "blue", "green"], [(8, 8, 40, 40)]
    expected = CRG(cpu_model, processor).score(image, prompt, candidates, regions=regions)
    got = CRG(gpu_model, processor).score(image, prompt, candidates, regions=regions)
    assert got == pytest.approx(expected, abs=SCORE_TOL[torch.bfloat16][0], rel=SCORE_TOL[torch.bfloat16][1])
    path = tmp_path / "image.png"
    image.save(path)
    run = subprocess.run(
        [sys.executable, "-m", "vcontrast.cli", "ask", str(path), prompt, "--box", "8,8,40,40", "--device", "cuda"],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "crg" in run.stdout.lower(), run.stdout


def _eval_runs(tmp_path, monkeypatch, from_checkpoint: bool, image_backend: str | None = None):
    """The toy benchmark's items (every task) through the eval runner with CRG: once on the GPU (the runner loading
    a checkpoint folder with `image_backend`, or a model already there), once with the same weights and processor on
    the CPU. Returns both runs' predictions and the devices `load_model` put models on."""
    from tests.bench.test_runner_model import toy_items
    from vcontrast.bench.runner import PREDICTIONS_FILE, evaluate, read_predictions
    from vcontrast.models import loading

    data = toy_items(tmp_path / "data")
    model, processor = tm.build("llava")
    tm.save_checkpoint(tmp_path / "checkpoint")
    devices, real = [], loading.load_model

    def spy(*args, **kwargs):
        loaded = real(*args, **kwargs)
        devices.append(next(loaded[0].parameters()).device.type)
        return loaded

    monkeypatch.setattr(loading, "load_model", spy)
    common = {"method": "crg", "batch_size": 4, "show_progress": False, "proposer": None, "max_new_tokens": 3}
    if from_checkpoint:
        evaluate(
            "toy", data, model=tmp_path / "checkpoint", out_dir=tmp_path / "gpu", image_backend=image_backend, **common
        )
    else:
        evaluate("toy", data, model=(on_cuda(model), processor), out_dir=tmp_path / "gpu", **common)
    evaluate("toy", data, model=(model, processor), out_dir=tmp_path / "cpu", **common)
    return [read_predictions(tmp_path / name / PREDICTIONS_FILE) for name in ("gpu", "cpu")], devices


def _assert_same_predictions(gpu: dict, cpu: dict) -> None:
    assert gpu.keys() == cpu.keys()
    for key in ("c0", "c1", "m0", "m1"):
        field = "scores" if key[0] == "c" else "logprobs"
        torch.testing.assert_close(torch.tensor(gpu[key][field]), torch.tensor(cpu[key][field]), atol=1e-4, rtol=1e-4)
    assert [gpu[k]["text"] for k in ("q0", "q1")] == [cpu[k]["text"] for k in ("q0", "q1")]
    assert [gpu[k]["pred_box"] for k in ("r0", "r1")] == [cpu[k]["pred_box"] for k in ("r0", "r1")]


def test_eval_runner_on_the_gpu_matches_the_cpu(tmp_path, monkeypatch):
    """The eval runner with a model on the GPU gives the CPU run's predictions (every task) to float32 rounding."""
    (gpu, cpu), _ = _eval_runs(tmp_path, monkeypatch, from_checkpoint=False)
    _assert_same_predictions(gpu, cpu)


def test_eval_runner_loads_a_checkpoint_on_the_gpu_and_matches_the_cpu(tmp_path, monkeypatch):
    """`vcontrast eval` in one process on a GPU machine: the runner loads the checkpoint on the GPU (accelerate's
    device) and, with the in-memory processor's backend pinned (PIL), its CRG predictions equal a CPU run's to
    float32 rounding. Unpinned, transformers takes torchvision where it is installed, whose resize moved image 0's
    scores by 3e-2 nats (seen on an H200 on 2026-11-28 and reproduced on the CPU: docs/crg.md)."""
    (gpu, cpu), devices = _eval_runs(tmp_path, monkeypatch, from_checkpoint=True, image_backend="pil")
    assert devices == ["cuda"]
    _assert_same_predictions(gpu, cpu)
