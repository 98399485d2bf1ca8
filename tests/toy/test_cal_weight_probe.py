"""docs/results/cal_weight_probe.py, whose numbers cal_testbed.md reports: its batched gains and weight shares equal
those computed one example at a time, and its loss check compares CAL (1, 1.01) with MLE on the batch it names."""

import importlib.util
from pathlib import Path

import pytest
import torch

from vcontrast.cal import cal_deltas, cal_weights
from vcontrast.toy.cal_inputs import clean_pool
from vcontrast.toy.model import build_model, load
from vcontrast.toy.train import collate, toy_processor

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "results" / "cal_weight_probe.py"
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "vision_hidden_size": 32, "vision_layers": 2}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("cal_weight_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    processor = toy_processor()
    folder = tmp_path_factory.mktemp("toy")
    build_model(processor, **TINY).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_probe_equals_one_example_at_a_time(script, saved):
    examples = [ex for ex in clean_pool(16, 0, 0) if ex.get("image") is not None][:7]
    got = script.probe(saved, examples, batch_size=3)  # batches of 3, 3 and 1: padding in between
    model, processor = load(saved)
    deltas, weights = [], []
    for ex in examples:
        batch = collate(processor, [ex])
        delta, mask = cal_deltas(model, batch, script.CAL_1_5)
        deltas.append(delta[mask])
        weights.append(cal_weights(model, batch, script.CAL_1_5)[mask])
    delta, weight = torch.cat(deltas).double(), torch.cat(weights).double()
    assert got["n_tokens"] == delta.numel() > 0
    assert got["median"] == pytest.approx(float(delta.median()), abs=1e-5)
    assert got["p90"] == pytest.approx(float(torch.quantile(delta, 0.9)), abs=1e-5)
    assert got["above_1"] == pytest.approx(float((weight > 1.0).double().mean()))


def test_loss_check(script, saved):
    # CAL (1, 1.01) is MLE up to weights in [1, 1.01]: the same loss and, with gradients zeroed between the two
    # backward passes, nearly the same gradient
    from vcontrast.toy.train import mle_loss

    examples = [ex for ex in clean_pool(16, 0, 0) if ex.get("image") is not None][:8]
    near = script.loss_check(saved, examples, beta=1.01)
    model, processor = load(saved)
    model.train()
    batch = collate(processor, examples)
    assert near["mle_loss"] == pytest.approx(float(mle_loss(model, batch).detach()), rel=1e-6)
    assert near["cal_loss"] == pytest.approx(near["mle_loss"], rel=1e-2) and near["grad_rel_diff"] < 1e-2
