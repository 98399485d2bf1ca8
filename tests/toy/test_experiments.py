"""The toy experiments: each runs end to end on a tiny budget and a tiny fresh model, writing table, plot and JSON."""

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from vcontrast.bench.items import read_items
from vcontrast.toy.cli import experiment_command, train_command
from vcontrast.toy.exp_cal import caption_f1
from vcontrast.toy.exp_crg import MaskingCRGMethod, caption_swap_items, proposed_items
from vcontrast.toy.experiments import (
    BUDGETS,
    ExperimentBudget,
    check_work_dir,
    markdown_table,
    paired_bootstrap,
    run_experiment,
    summarize,
)
from vcontrast.toy.grammar import caption
from vcontrast.toy.model import build_model
from vcontrast.toy.scenes import Scene
from vcontrast.toy.tasks import make_split
from vcontrast.toy.train import toy_processor

TINY = BUDGETS["tiny"]
TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "vision_hidden_size": 32, "vision_layers": 2}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    processor = toy_processor()
    build_model(processor, **TINY_MODEL).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _files(result):
    return sorted(p.name for p in result.files)


def test_cal_crg_end_to_end(tmp_path):
    # The tiny budget builds its own tiny stage-1 model and trains the N1 runs of "cal_noise" that cal_crg reads.
    result = run_experiment("cal_crg", out_dir=tmp_path, budget="tiny", work_dir=tmp_path / "work")
    assert _files(result) == ["cal_crg.json", "cal_crg.md", "cal_crg.png"]
    records = result.data["records"]
    assert {(r["task"], r["metric"]) for r in records} == {
        ("caption", "attr_f1"),
        ("caption", "object_f1"),
        ("caption_swap", "accuracy"),
        ("refexp", "acc@0.5"),
    }
    assert len(records) == 4 * 2 * 2 * len(TINY.seeds)  # metrics x methods x guidance x seeds
    assert "CAL + CRG" in result.table


def test_crg_end_to_end(tmp_path, tiny_model_dir):
    work = tmp_path / "work"
    result = run_experiment("crg", out_dir=tmp_path, budget="tiny", work_dir=work, model=tiny_model_dir)
    assert _files(result) == ["crg.json", "crg.md", "crg.png"]
    summary = result.data["summary"]
    assert list(summary) == ["region_vqa", "spatial", "swap", "match", "refexp"]
    for task, entry in summary.items():
        assert {"base/true", "crg/true", "crg/proposed", "overlay/true", "crg+overlay/true", "vcd/true"} <= set(entry)
        assert ("crg-whole/true" in entry) == (task != "refexp")
        assert "vcd/true/delta_ci" in entry
    assert summary["spatial"]["proposer"]["same_boxes"] == 1.0  # the proposer finds exactly the two named objects
    assert summary["refexp"]["proposer"]["same_boxes"] == 1.0  # every object, found from the pixels
    assert "masking ablation" in result.table and "baselines" in result.table
    # the runner's folders say which regions each CRG run used
    metrics = json.loads((work / "crg" / "proposed-crg" / "spatial" / "metrics.json").read_text())
    assert metrics["config"]["proposer"] == "toy" and metrics["regions_source"] == {"proposer": TINY.n_items}
    metrics = json.loads((work / "crg" / "true-crg-combined" / "swap" / "metrics.json").read_text())
    assert metrics["config"]["mode"] == "combined" and metrics["regions_source"] == {"item": TINY.n_items}


def test_work_dir_refuses_another_budget(tmp_path, tiny_model_dir):
    run_experiment("crg", out_dir=tmp_path, budget="tiny", work_dir=tmp_path / "w", model=tiny_model_dir)
    other = ExperimentBudget(**{**TINY.to_dict(), "n_items": 5})
    with pytest.raises(ValueError, match="another configuration"):
        run_experiment("crg", out_dir=tmp_path, budget=other, work_dir=tmp_path / "w", model=tiny_model_dir)
    check_work_dir(tmp_path / "c", {"a": 1})
    check_work_dir(tmp_path / "c", {"a": 1})
    with pytest.raises(ValueError, match="another configuration"):
        check_work_dir(tmp_path / "c", {"a": 2})


def test_caption_f1():
    truth = "a small red circle on the left and a large blue square at the top right ."
    assert caption_f1(truth, truth) == {"attr_f1": 1.0, "object_f1": 1.0}
    one_wrong = caption_f1("a small red square on the left .", "a small red circle on the left .")
    assert one_wrong == {"attr_f1": 0.75, "object_f1": 0.0}  # 3 of 4 attribute words, 0 of 1 object
    assert caption_f1("", truth) == {"attr_f1": 0.0, "object_f1": 0.0}
    assert caption_f1("", "") == {"attr_f1": 1.0, "object_f1": 1.0}


def test_proposed_items_come_from_pixels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative folders, as the CLI's defaults
    path = make_split("refexp", 6, seed=0, split="test", out_dir="data")
    out = proposed_items(path, Path("proposed") / path.name)
    for true, proposed in zip(read_items(path), read_items(out), strict=True):
        assert Path(proposed.image).is_file()
        assert proposed.regions == [] and proposed.meta["boxes"] == "proposed"
        assert sorted(proposed.proposals) == sorted(true.proposals)  # exact proposer: the same boxes
        assert proposed.proposals[proposed.answer] == true.target
    path = make_split("spatial", 4, seed=0, split="test", out_dir=tmp_path)
    out = proposed_items(path, tmp_path / "proposed" / path.name)
    assert all(item.regions == [] for item in read_items(out))


def test_caption_swap_items(tmp_path):
    path = caption_swap_items(8, tmp_path)
    items = list(read_items(path))
    assert len(items) == 8 and {item.answer for item in items} == {0, 1}
    for item in items:
        scene = Scene.from_dict(item.meta["scene"])
        true, false = item.candidates[item.answer], item.candidates[1 - item.answer]
        assert true == caption(scene) and false != true and len(false.split()) == len(true.split())
        assert 1 <= len(item.regions) <= 2 and all(r in [o.box for o in scene.objects] for r in item.regions)
    assert caption_swap_items(8, tmp_path) == path  # an existing file is kept


def test_masking_method_records_its_mode(tiny_model_dir):
    from vcontrast.toy.model import load

    model, processor = load(tiny_model_dir)
    method = MaskingCRGMethod(model, processor, alpha=1.0, mode="combined", proposer=None)
    assert method.config["mode"] == "combined" and method.crg.mode == "combined" and method.name == "crg"


def test_statistics_helpers():
    assert summarize([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5), "min": 1.0, "max": 3.0, "n": 2}
    assert summarize([0.5])["std"] == 0.0
    a, b = np.array([1, 1, 1, 0, 1, 1]), np.array([0, 1, 0, 0, 1, 0])
    low, high = paired_bootstrap(lambda i: a[i].mean() - b[i].mean(), 6, 200)
    assert low <= 0.5 <= high
    assert paired_bootstrap(lambda i: a[i].mean() - a[i].mean(), 6, 50) == (0.0, 0.0)
    assert markdown_table(["a", "b"], [[1, 2]]).splitlines() == ["| a | b |", "|:--|--:|", "| 1 | 2 |"]


@pytest.mark.parametrize(
    "bad", [{"seeds": ()}, {"noise_rates": (1.5,)}, {"cal_crg_noise": 0.25}, {"finetune_steps": 0}, {"n_items": 1.5}]
)
def test_budget_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ExperimentBudget(**bad)
    with pytest.raises(ValueError, match="budget"):
        run_experiment("crg", budget="huge")
    with pytest.raises(ValueError, match="name"):
        run_experiment("nope", budget="tiny")


def test_experiment_command(tmp_path, tiny_model_dir):
    app = typer.Typer()
    app.command()(experiment_command)
    app.command("other")(lambda: None)  # two commands: typer keeps the command name
    runner = CliRunner()
    assert runner.invoke(app, ["experiment-command", "--help"]).exit_code == 0
    from vcontrast.cli import run

    assert run(["toy", "experiment", "nope"]) == 2  # the main CLI's error policy: one line, exit 2
    assert run(["toy", "experiment", "crg", "--budget", "huge"]) == 2
    args = [
        "experiment-command",
        "crg",
        "--budget",
        "tiny",
        "--work-dir",
        str(tmp_path / "w"),
        "--model",
        str(tiny_model_dir),
        "--threads",
        "1",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| spatial |" in result.output and "wrote" in result.output
    # Without --out, the results go to WORK_DIR/NAME, never to the committed docs/results.
    assert {"crg.json", "crg.md"} <= {p.name for p in (tmp_path / "w" / "crg").glob("crg.*")}


def test_train_command_help():
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("experiment")(experiment_command)
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "--vision-steps" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["crg"])
def test_experiment_at_real_budget(tmp_path, name):
    # crg needs the shipped model; cal_noise and cal_scratch at the full budget take days (run them by --tier).
    result = run_experiment(name, out_dir=tmp_path, budget="full", work_dir=tmp_path / "work")
    assert len(result.files) == 3
