"""The test bed's gates (`vcontrast toy gates`): metrics against slow, obvious recomputations on a tiny model."""

import json
import random
import statistics

import pytest
import torch
from PIL import ImageOps
from typer.testing import CliRunner

from vcontrast.toy import gates
from vcontrast.toy import train as toy_train
from vcontrast.toy.grammar import RELATIONS, caption, words
from vcontrast.toy.model import build_model
from vcontrast.toy.scenes import COLORS, Scene
from vcontrast.toy.tasks import iter_split
from vcontrast.toy.tokenizer import chat_prompt

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "vision_hidden_size": 32, "vision_layers": 1}
N = 6


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    processor = toy_train.toy_processor()
    model = build_model(processor, **TINY).eval()
    for p in model.parameters():  # spread weights: at the default init every score is ~equal and nothing can fail
        torch.nn.init.normal_(p, std=0.3)
    return model, processor


@pytest.fixture(scope="module")
def metrics(tiny):
    return gates.measure(*tiny, n=N, batch_size=4)


def _logprob(model, processor, image, prompt, answer):
    # The slow way: one full forward of prompt + answer, log-softmax summed over the answer's tokens.
    prefix = chat_prompt(processor, prompt)
    full = processor(images=[image], text=[f"{prefix} {answer}"], return_tensors="pt")
    n_prefix = processor(images=[image], text=[prefix], return_tensors="pt")["input_ids"].shape[1]
    with torch.no_grad():
        logp = model(**full).logits[0].log_softmax(-1)  # (T, V)
    ids = full["input_ids"][0]
    return sum(float(logp[t - 1, ids[t]]) for t in range(n_prefix, len(ids)))


def test_spatial_and_mirror_match_brute_force(tiny, metrics):
    model, processor = tiny
    right, consistent, inconsistent = [], [], []
    for image, item in iter_split("spatial", N, 0, "val"):
        scores = [_logprob(model, processor, image, item.prompt, c) for c in item.candidates]
        hit = max(range(4), key=scores.__getitem__) == item.answer
        right.append(hit)
        (consistent if item.answer == item.meta["prior"] else inconsistent).append(hit)
    assert metrics["spatial_acc"] == pytest.approx(sum(right) / N)
    if consistent and inconsistent:
        gap = sum(consistent) / len(consistent) - sum(inconsistent) / len(inconsistent)
        assert metrics["spatial_prior_gap"] == pytest.approx(gap)

    lr = (RELATIONS.index("left of"), RELATIONS.index("right of"))
    items = [(im, it) for im, it in iter_split("spatial", 3 * N, 7, "val") if it.answer in lr][:N]
    flips, shifts = [], []
    for image, item in items:
        prefs = []
        for im in (image, ImageOps.mirror(image)):
            left, rightward = (_logprob(model, processor, im, item.prompt, item.candidates[k]) for k in lr)
            prefs.append(left - rightward)
        flips.append((prefs[0] > 0) != (prefs[1] > 0))
        towards_gold = prefs[0] - prefs[1] if item.answer == lr[0] else prefs[1] - prefs[0]
        shifts.append(towards_gold / 2)
    assert metrics["mirror_items"] == len(items)
    assert metrics["mirror_flip"] == pytest.approx(sum(flips) / len(items), abs=1e-9)
    # The shifts are small on the tiny model (~1e-3), so compare at 1% of their mean: a wrong sign or scale shows.
    assert abs(sum(shifts)) > 1e-4
    assert metrics["mirror_shift"] == pytest.approx(sum(shifts) / len(items), rel=1e-2, abs=1e-7)


def test_swap_matches_brute_force(tiny, metrics):
    model, processor = tiny
    right = []
    for image, item in iter_split("swap", N, 0, "val"):
        scores = [_logprob(model, processor, image, item.prompt, c) for c in item.candidates]
        right.append(max(range(2), key=scores.__getitem__) == item.answer)
    assert metrics["swap_acc"] == pytest.approx(sum(right) / N)


def test_deltas_match_two_plain_forwards(tiny, metrics):
    # Brute force: the logit with the image from the plain forward, without it from the text-only batch (the layout
    # CAL's no-image pass uses, tested against NoImage in test_toy_model), classified word by word.
    model, processor = tiny
    glue, visual = [], []
    for image, item in iter_split("caption", N, 0, "val"):
        ex = toy_train.item_example(image, item)
        with_image = toy_train.collate(processor, [ex])
        text = toy_train.collate(processor, [ex | {"image": None}])
        with torch.no_grad():
            ref = model(**{k: v for k, v in with_image.items() if k != "labels"}).logits[0]
            con = model(**{k: v for k, v in text.items() if k != "labels"}).logits[0]
        gold_ref = [(int(t), float(ref[p - 1, t])) for p, t in enumerate(with_image["labels"][0]) if t != -100]
        gold_con = [float(con[p - 1, t]) for p, t in enumerate(text["labels"][0]) if t != -100]
        for (tok_id, r), c in zip(gold_ref, gold_con, strict=True):
            word = processor.tokenizer.convert_ids_to_tokens(tok_id)
            if word in gates.GLUE_WORDS:
                glue.append(r - c)
            elif word in gates._visual_words():
                visual.append(r - c)
    assert metrics["delta_glue"] == pytest.approx(statistics.median(glue), abs=1e-4)
    assert metrics["delta_visual"] == pytest.approx(statistics.median(visual), abs=1e-4)
    assert 0.0 <= metrics["contradicted_negative"] <= 1.0


def test_contradicted_caption_changes_exactly_one_colour_word():
    for _, item in iter_split("caption", 30, 1, "val"):
        scene = Scene.from_dict(item.meta["scene"])
        if not scene.objects:
            continue
        text, index, word = gates.contradicted_caption(scene, random.Random(0))
        before, after = words(caption(scene)), words(text)
        assert after[index] == word and word in COLORS and before[index] in COLORS and before[index] != word
        assert before[:index] == after[:index] and before[index + 1 :] == after[index + 1 :]


def test_gate_bounds_check_and_table():
    gate = gates.Gate("x", "x", low=0.6, high=0.9)
    assert gate.passes(0.6) and gate.passes(0.9) and not gate.passes(0.95) and not gate.passes(float("nan"))
    assert gate.threshold == "0.6-0.9" and gates.Gate("y", "y", high=1.0).threshold == "<= 1"
    with pytest.raises(ValueError, match="mirror_flip"):
        gates.check({})
    results = gates.check(dict.fromkeys([g.key for g in gates.GATES], 0.85))
    table = gates.gates_table(results)
    assert table.count("\n") == len(gates.GATES) + 1
    assert "| mirror test: left/right preference flips | 0.850 | >= 0.8 | pass |" in table
    assert "| CAL gain, glue words (median) | 0.850 | <= 1 | pass |" in table
    assert "| CAL gain, visual words (median) | 0.850 | >= 3 | FAIL |" in table
    with pytest.raises(ValueError, match="`n`"):
        gates.measure(None, None, n=0)


def test_claims_name_their_failed_gates():
    # PLAN.md: a report names the failed gate next to every claim it affects.
    passing = {"mirror_flip": 0.9, "spatial_acc": 0.7, "spatial_prior_gap": 0.2, "match_auroc": 0.8}
    passing |= {"where_acc": 0.7, "swap_acc": 0.8, "delta_glue": 0.5, "delta_visual": 3.5}
    passing |= {"contradicted_negative": 0.9}
    assert {g.key for g in gates.GATES} == set(passing)
    table = gates.claims_gates_table("crg", passing, "val")
    assert table.count("none failed") == 4 and "no gate covers it" in table
    failing = passing | {"mirror_flip": 0.0, "delta_visual": 0.8}
    rows = dict(line.strip("| ").split(" | ") for line in gates.claims_gates_table("crg", failing).splitlines()[-5:])
    assert [k[:4] for k, v in rows.items() if "mirror test" in v] == ["H1.1", "H1.5"]
    assert "left/right preference flips 0.0% (needs >= 80%)" in rows[next(iter(rows))]
    for experiment in ("cal_noise", "cal_scratch"):
        line = gates.claims_gates_table(experiment, failing).splitlines()[-1]
        assert "CAL gain, visual words (median) 0.80 (needs >= 3)" in line and "mirror" not in line
    assert "Gates not given" in gates.claims_gates_table("crg", None)
    assert gates.claims_gates_table("cal_crg", failing) == ""  # no registered claims


def test_an_experiment_report_cites_the_gates_file(tmp_path):
    from vcontrast.toy.experiments import _read_gates

    path = tmp_path / "gates.json"
    metrics = dict.fromkeys([g.key for g in gates.GATES], 0.5)
    path.write_text(json.dumps({"model": "m", "n": 20, "split": "val", "metrics": metrics}))
    read, source = _read_gates(path)
    assert read == metrics and "val split (n = 20) with model m" in source
    path.write_text(json.dumps({"metrics": {"mirror_flip": 0.5}}))
    with pytest.raises(ValueError, match="lacks the gate metrics"):
        _read_gates(path)
    with pytest.raises(ValueError, match="is not a file"):
        _read_gates(tmp_path / "missing.json")


def test_cli_prints_the_table_fails_on_a_failed_gate_and_draws_the_learning_curve(tmp_path):
    from vcontrast.cli import app

    kw = {"batch_size": 2, "stage": "it", "log_every": 2, "warmup": 1, "num_threads": 1}
    where = toy_train.train(tmp_path / "run" / "ground-1-where", steps=2, mix={"where": 1.0}, model_kwargs=TINY, **kw)
    toy_train.train(tmp_path / "run" / "ground-2-spatial_lr", steps=1, model_kwargs=TINY, **kw)
    (tmp_path / "run" / "ground-2-spatial_lr" / "train_state.json").unlink()  # unfinished: not on the curve
    run = toy_train.train(tmp_path / "run", steps=4, init=where, snapshot_every=2, **kw)
    out = tmp_path / "gates.json"
    result = CliRunner().invoke(
        app, ["toy", "gates", "--model", str(run), "--n", "6", "--curve", "--json", str(out), "--threads", "1"]
    )
    assert result.exit_code == 1, result.output  # an untrained model fails its gates
    assert "| swap 2-way accuracy |" in result.output and "failed gates:" in result.output
    data = json.loads(out.read_text())
    assert f"mirror shift towards the gold relation: {data['metrics']['mirror_shift']:+.3f}" in result.output
    assert "| phase | step | mirror_flip |" in result.output and result.output.count("mirror_shift") == 1
    assert [(p["phase"], int(p["step"])) for p in data["curve"]] == [("ground-1-where", 2), ("it", 2), ("it", 4)]
    assert "| ground-1-where | 2 |" in result.output
    assert data["metrics"]["where_acc"] == data["curve"][-1]["where_acc"]  # the final model is the curve's end
    bad = CliRunner().invoke(app, ["toy", "gates", "--model", str(run), "--split", "dev"])
    assert bad.exit_code != 0 and "split" in str(bad.exception or bad.output)
