"""The built-in methods on a tiny LLaVA: prediction schema per task, regions from the item, the proposer or the
whole image, CRG at alpha 0 equal to the plain model, and the CLI function on a saved checkpoint."""

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from tests import tiny_models as tm
from tests.bench.test_runner import write_sugarcrepe
from vcontrast.bench.cli import eval_command
from vcontrast.bench.items import Item, write_items
from vcontrast.bench.methods import BaseMethod, CRGMethod, get_method, region_phrases
from vcontrast.bench.runner import PREDICTIONS_FILE, evaluate, read_predictions
from vcontrast.crg.proposals import Proposal, register_proposer


def toy_items(root, n=2):
    """Items of every task in the toy JSONL layout, images from `tiny_models.image`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        tm.image(i).save(root / "images" / f"{i}.png")
        image = f"images/{i}.png"
        items += [
            Item(id=f"c{i}", task="choice", image=image, prompt="what is in the box ?",
                 candidates=["a red cup", "a blue dog", "a cat"], answer=0, regions=[(2, 2, 10, 10)] if i else []),
            Item(id=f"m{i}", task="match", image=image, prompt="a red cup", label=i % 2, regions=[(0, 0, 12, 20)]),
            Item(id=f"q{i}", task="vqa", image=image, prompt="what colour is the cup ?", answer="red",
                 regions=[(0, 0, 5, 5)]),
            Item(id=f"r{i}", task="refexp", image=image, prompt="the red cup",
                 proposals=[(0, 0, 10, 10), (10, 5, 24, 20), (4, 4, 20, 16)], target=(0, 0, 10, 10), answer=0),
        ]  # fmt: skip
    write_items(items, root / "test.jsonl")
    return root


def test_base_and_crg_predictions(tmp_path):
    data = toy_items(tmp_path / "data")
    model = tm.build("llava")
    kwargs = {"model": model, "batch_size": 4, "show_progress": False, "proposer": None, "max_new_tokens": 3}
    base = evaluate("toy", data, method="base", out_dir=tmp_path / "base", **kwargs)
    crg = evaluate("toy", data, method="crg", alpha=1.0, out_dir=tmp_path / "crg", **kwargs)
    evaluate("toy", data, method="crg", alpha=0.0, out_dir=tmp_path / "zero", **kwargs)
    assert set(base["metrics"]) == {"choice/accuracy", "match/auroc", "match/f1", "vqa/exact_match", "refexp/acc@0.5"}
    assert crg["config"] == {"alpha": 1.0, "proposer": None, "proposer_model": None, "max_new_tokens": 3}
    assert crg["regions_source"] == {"item": 5, "whole": 1} and crg["proposals_source"] == {"item": 2}
    assert "regions_source" not in base

    p = {name: read_predictions(tmp_path / name / PREDICTIONS_FILE) for name in ("base", "crg", "zero")}
    assert len(p["crg"]["c0"]["scores"]) == 3 and p["crg"]["c0"]["regions"] == [[0.0, 0.0, 24.0, 20.0]]
    assert p["crg"]["c1"]["regions"] == [[2.0, 2.0, 10.0, 10.0]] and p["crg"]["c1"]["regions_source"] == "item"
    assert 0 <= p["crg"]["m0"]["p_yes"] <= 1 and isinstance(p["crg"]["q0"]["text"], str)
    assert p["crg"]["r0"]["pred_box"] in [[0, 0, 10, 10], [10, 5, 24, 20], [4, 4, 20, 16]]
    # P(yes) is renormalised over yes / no
    yes, no = p["crg"]["m1"]["logprobs"]
    assert p["crg"]["m1"]["p_yes"] == pytest.approx(1 / (1 + torch.tensor(no - yes).exp().item()))

    # guidance changes scores; at alpha 0, CRG is the plain model (refexp differs by design: crops vs blackouts)
    assert p["crg"]["c1"]["scores"] != p["base"]["c1"]["scores"]
    for key in ("c0", "c1", "m0", "m1"):
        field = "scores" if key[0] == "c" else "logprobs"
        torch.testing.assert_close(torch.tensor(p["zero"][key][field]), torch.tensor(p["base"][key][field]))
    assert [p["zero"][k]["text"] for k in ("q0", "q1")] == [p["base"][k]["text"] for k in ("q0", "q1")]


class BoxProposer:
    """A stand-in detector: one fixed box per phrase, recording what it was asked."""

    name = "fixed-box"

    def __init__(self, boxes=((1.0, 2.0, 9.0, 8.0),)):
        self.boxes, self.asked = boxes, []

    def __call__(self, image, phrases):
        self.asked.append(list(phrases))
        return [Proposal(box, 0.9, phrase) for phrase in phrases for box in self.boxes][: len(self.boxes)]


def test_regions_from_the_proposer_and_whole_image_fallback():
    model, processor = tm.build("llava")
    proposer = BoxProposer()
    method = CRGMethod(model, processor, alpha=1.0, proposer=proposer, max_new_tokens=2)
    image = tm.image(0)
    choice = Item(id="c", task="choice", image="x", prompt="describe the image .", candidates=["a red cup", "a dog"])
    match = Item(id="m", task="match", image="x", prompt="a red cup on a plate", label=1)
    nothing = Item(id="n", task="vqa", image="x", prompt="?")
    refexp = Item(id="r", task="refexp", image="x", prompt="the red cup", target=(0, 0, 4, 4))
    out = method.predict([choice, match, nothing, refexp], [image] * 4)
    # choice items: phrases of the candidates, never of the generic prompt; others: of the prompt
    assert (
        proposer.asked[:2]
        == [["red cup", "dog"], ["red cup", "plate"]]
        == [region_phrases(choice), ["red cup", "plate"]]
    )
    assert out[0]["regions"] == [[1.0, 2.0, 9.0, 8.0]] and out[0]["regions_source"] == "proposer"
    assert out[1]["regions_source"] == "proposer"
    assert out[2]["regions"] == [[0.0, 0.0, 24.0, 20.0]] and out[2]["regions_source"] == "whole"  # no noun phrase
    assert out[3]["proposals_source"] == "proposer" and out[3]["pred_box"] == [1.0, 2.0, 9.0, 8.0]
    # the regions reach the contrast stream: other boxes, other scores
    other = CRGMethod(model, processor, alpha=1.0, proposer=BoxProposer(((12.0, 0.0, 24.0, 20.0),)))
    assert other.predict([choice], [image])[0]["scores"] != out[0]["scores"]

    base = BaseMethod(model, processor, proposer=None)
    assert base.predict([refexp], [image])[0] == {
        "scores": base.predict([refexp], [image])[0]["scores"],
        "pred_index": 0,
        "pred_box": [0.0, 0.0, 24.0, 20.0],
        "proposals_source": "whole",
        "proposals": [[0.0, 0.0, 24.0, 20.0]],
    }


def test_rerank_prompt_sets_the_expression_format():
    # Every re-ranking method scores the expression as the answer to `rerank_prompt` (default CRG's RERANK_PROMPT),
    # CRG by the unnormalised log-ratio; once set, the prompt is part of the method's config.
    from vcontrast.crg.crg import RERANK_PROMPT
    from vcontrast.regions import blackout

    model, processor = tm.build("llava")
    image, boxes = tm.image(0), [(0.0, 0.0, 10.0, 10.0), (10.0, 5.0, 24.0, 20.0)]
    refexp = Item(id="r", task="refexp", image="x", prompt="the red cup", proposals=boxes, target=boxes[0])
    prompt = "name one object in the image ."
    for name in ("base", "crg", "overlay", "crg+overlay", "vcd"):
        method = get_method(name, model, processor, proposer=None)
        assert "rerank_prompt" not in method.config and method.expression_prompt() == RERANK_PROMPT
        default = method.predict([refexp], [image])[0]["scores"]
        method.rerank_prompt = prompt
        assert method.config["rerank_prompt"] == prompt
        if name != "vcd":  # the random model's crops fall below VCD's plausibility cutoff: -inf either way
            assert method.predict([refexp], [image])[0]["scores"] != default, name
    crg = get_method("crg", model, processor, proposer=None)
    crg.rerank_prompt = prompt
    scores = crg.predict([refexp], [image])[0]["scores"]
    plain = BaseMethod(model, processor, proposer=None).crg

    def loglik(picture):
        return plain.score_batch([picture], [prompt], [["the red cup"]])[0][0]

    for box, score in zip(boxes, scores, strict=True):
        # brute force: the log-likelihood of the expression with the image, minus with only this box blacked out
        assert score == pytest.approx(loglik(image) - loglik(blackout(image, [box])), abs=1e-4)


def test_rerank_prompt_by_name_in_python_and_the_cli(tmp_path):
    # `rerank_prompt=` (get_method, evaluate) and `--rerank-prompt` give the predictions of a method whose attribute
    # is set, record the prompt in the run's config, and are refused where they cannot apply.
    model, processor = tm.build("llava")
    tm.save_checkpoint(tmp_path / "ckpt")
    data = toy_items(tmp_path / "data")
    prompt = "name one object in the image ."
    built = get_method("crg", model, processor, proposer=None, rerank_prompt=prompt)
    assert built.config["rerank_prompt"] == prompt and built.expression_prompt() == prompt
    reference = get_method("crg", model, processor, proposer=None)
    reference.rerank_prompt = prompt
    common = {"split": "test", "show_progress": False, "proposer": None}
    expected = evaluate("toy", data, method=reference, out_dir=tmp_path / "ref", **common)
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.callback()(lambda: None)
    args = [
        "eval",
        "--benchmark",
        "toy",
        "--data-dir",
        str(data),
        "--split",
        "test",
        "--model",
        str(tmp_path / "ckpt"),
    ]
    args += ["--method", "crg", "--proposer", "none", "--no-progress", "--out", str(tmp_path / "cli")]
    args += ["--image-backend", "pil"]  # the in-memory processor's, also where torchvision is installed
    result = CliRunner().invoke(app, [*args, "--rerank-prompt", prompt])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert summary["config"]["rerank_prompt"] == prompt and summary["config"] == expected["config"]
    got, want = (read_predictions(tmp_path / d / PREDICTIONS_FILE) for d in ("cli", "ref"))
    assert {k: v["scores"] for k, v in got.items() if k.startswith("r")} == {
        k: pytest.approx(v["scores"]) for k, v in want.items() if k.startswith("r")
    }
    # the default prompt scores otherwise, and a rerun with another prompt into the same folder is refused
    default = evaluate("toy", data, method="crg", model=(model, processor), out_dir=tmp_path / "default", **common)
    assert "rerank_prompt" not in default["config"]
    assert read_predictions(tmp_path / "default" / PREDICTIONS_FILE)["r0"]["scores"] != got["r0"]["scores"]
    again = CliRunner().invoke(app, [*args, "--rerank-prompt", "describe the image ."])
    assert again.exit_code == 2 and "rerank_prompt" in again.output
    with pytest.raises(ValueError, match="`rerank_prompt` is for a method given by name"):
        evaluate("toy", data, method=reference, out_dir=tmp_path / "x", rerank_prompt=prompt, **common)
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match=r"`rerank_prompt` \(="):
            get_method("base", model, processor, rerank_prompt=bad)


def test_method_arguments_are_checked():
    model, processor = tm.build("llava")
    with pytest.raises(ValueError, match="`alpha` \\(=-1\\)"):
        get_method("crg", model, processor, alpha=-1)
    with pytest.raises(ValueError, match="`max_new_tokens` \\(=0\\)"):
        get_method("base", model, processor, max_new_tokens=0)
    with pytest.raises(ValueError, match="`proposer` \\(=3\\)"):
        get_method("base", model, processor, proposer=3)
    with pytest.raises(ValueError, match="`method` \\(='dola'\\)"):
        get_method("dola", model, processor)

    def unreachable(**kwargs):
        raise OSError("no such checkpoint offline")

    register_proposer("unreachable-test", unreachable, overwrite=True)
    method = get_method("crg", model, processor, proposer="unreachable-test")
    item = Item(id="q", task="vqa", image="x", prompt="what is the red cup ?")
    with pytest.raises(ValueError, match=r"items \['q'\]: cannot load the region proposer .*--proposer none"):
        method.predict([item], [tm.image(0)])


def test_cli_on_a_saved_checkpoint(tmp_path, make_image):
    tm.save_checkpoint(tmp_path / "ckpt")
    data = write_sugarcrepe(tmp_path / "data", make_image, n=3)
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.callback()(lambda: None)
    args = ["eval", "--benchmark", "sugarcrepe", "--data-dir", str(data), "--model", str(tmp_path / "ckpt")]
    args += ["--method", "crg", "--alpha", "0.5", "--out", str(tmp_path / "out"), "--proposer", "none"]
    args += ["--no-progress", "--batch-size", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sugarcrepe · crg · alpha 0.5 · 3 items" in result.output and "accuracy" in result.output
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["model"]["name"] == str((tmp_path / "ckpt").resolve()) and summary["regions_source"] == {"whole": 3}
    assert set(summary["model"]["files"]) >= {"config.json", "model.safetensors"}
    # rerun: nothing left to do, so the model is not even loaded; the same table
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "Loading weights" not in again.output
    assert again.output.strip() == result.output[result.output.index("sugarcrepe ·") :].strip()


def test_toy_proposer_by_name():
    from vcontrast.toy.tasks import build_task

    model, processor = tm.build("llava")
    image, item = build_task("spatial", 1)
    truth, item.regions = item.regions, []
    out = CRGMethod(model, processor, proposer="toy").predict([item], [image])[0]
    assert out["regions_source"] == "proposer" and sorted(map(tuple, out["regions"])) == sorted(truth)
