"""The toy experiments: each runs end to end on a tiny budget and a tiny fresh model, writing table, plot and JSON."""

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from vcontrast.bench.items import read_items
from vcontrast.bench.methods import ModelMethod
from vcontrast.bench.runner import PREDICTIONS_FILE, read_predictions
from vcontrast.toy.cal_eval import caption_f1
from vcontrast.toy.cli import experiment_command, parse_phases, train_command
from vcontrast.toy.exp_crg import (
    E1_METHODS,
    VS_CRG,
    MaskingCRGMethod,
    caption_swap_items,
    compare,
    prior_gap,
    proposed_items,
)
from vcontrast.toy.experiments import (
    BUDGETS,
    ExperimentBudget,
    check_work_dir,
    markdown_table,
    paired_bootstrap,
    run_experiment,
    summarize,
)
from vcontrast.toy.grammar import PROMPTS, caption
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


def test_crg_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    work = tmp_path / "work"
    result = run_experiment("crg", out_dir=tmp_path, budget="tiny", work_dir=work, model=tiny_model_dir)
    assert _files(result) == ["crg.json", "crg.md", "crg.png"]
    summary = result.data["summary"]
    assert list(summary["tasks"]) == ["spatial", "swap", "match", "region_vqa"]
    for entry in summary["tasks"].values():
        assert list(entry["values"]) == [*E1_METHODS, "crg-combined", "crg-whole", "crg-proposed"]
        assert set(entry["vs_base"]) == set(entry["values"]) - {"base"} and set(entry["vs_crg"]) == set(VS_CRG)
    assert list(summary["refexp"]) == ["true/refer", "true/describe", "proposed/refer", "proposed/describe"]
    assert [h["id"] for h in summary["hypotheses"]] == ["H1.1", "H1.1", "H1.2", "H1.3", "H1.4"] + ["H1.5"] * 8
    assert summary["proposer"]["spatial"]["same_boxes"] == 1.0  # the proposer finds exactly the two named objects
    assert summary["proposer"]["refexp"]["same_boxes"] == 1.0  # every object, found from the pixels
    for heading in ("Hypotheses", "Spatial by prior", "Refexp (acc@0.5)", "masking ablation", "Machine:"):
        assert heading in result.table
    assert result.data["machine"]["cpu_count"] >= 1 and result.data["eval_s_total"] >= 0

    # the runner's folders say which settings each run used: refexp in the "refer" format (main rows) or CRG's
    # default prompt, regions from the items or from the proposer, the masking mode
    def metrics(tag, task):
        return json.loads((work / "crg" / tag / task / "metrics.json").read_text())

    for tag in ("true-crg-refer", "true-base-refer", "proposed-crg-refer", "proposed-base-refer"):
        assert (
            metrics(tag, "refexp")["config"]["rerank_prompt"] == PROMPTS["refer"] == "name one object in the image ."
        )
    assert "rerank_prompt" not in metrics("true-crg-describe", "refexp")["config"]
    spatial = metrics("proposed-crg", "spatial")
    assert spatial["config"]["proposer"] == "toy" and spatial["regions_source"] == {"proposer": TINY.n_items}
    swap = metrics("true-crg-combined", "swap")
    assert swap["config"]["mode"] == "combined" and swap["regions_source"] == {"item": TINY.n_items}

    # the statistics, recomputed by brute force from the items and the predictions files
    def items(boxes, task):
        return list(read_items(work / "crg" / "data" / boxes / f"{task}_test.jsonl"))

    def predictions(tag, task):
        return read_predictions(work / "crg" / tag / task / PREDICTIONS_FILE)

    spatial_items = items("true", "spatial")
    n = len(spatial_items)
    correct = {}
    for method in ("base", "crg"):
        p = predictions(f"true-{method}", "spatial")
        correct[method] = [
            float(all(p[it.id]["scores"][it.answer] > s for k, s in enumerate(p[it.id]["scores"]) if k != it.answer))
            for it in spatial_items
        ]
    consistent = [it.meta["relation"] == "left of" for it in spatial_items]  # the train split's favourite
    assert 0 < sum(consistent) < n  # both groups present in the tiny budget's items

    def gap(index):
        groups = [[i for i in index if consistent[i] == c] for c in (False, True)]
        if not all(groups):
            return None
        gains = [sum(correct["crg"][i] - correct["base"][i] for i in g) / len(g) for g in groups]
        return gains[0] - gains[1]

    h11 = summary["spatial_prior"]["crg"]["gap"]
    assert h11["delta"] == pytest.approx(gap(range(n)))
    rng, stats = np.random.default_rng(0), []
    for _ in range(TINY.bootstrap):
        value = gap(list(rng.integers(0, n, n)))
        if value is not None:
            stats.append(value)
    assert h11["ci"] == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))
    assert summary["hypotheses"][1]["delta"] == h11["delta"]
    delta = summary["tasks"]["spatial"]["vs_base"]["crg"]["delta"]
    assert delta == pytest.approx((sum(correct["crg"]) - sum(correct["base"])) / n)

    def auroc(tag):
        p = predictions(tag, "match")
        pos = [p[it.id]["p_yes"] for it in items("true", "match") if it.label == 1]
        neg = [p[it.id]["p_yes"] for it in items("true", "match") if it.label == 0]
        return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))

    match = summary["tasks"]["match"]
    assert match["values"]["vcd"] == pytest.approx(auroc("true-vcd"))
    assert match["vs_base"]["vcd"]["delta"] == pytest.approx(auroc("true-vcd") - auroc("true-base"))

    def iou(a, b):
        w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        inter = max(w, 0) * max(h, 0)
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    for boxes in ("true", "proposed"):
        crop, crg = predictions(f"{boxes}-base-refer", "refexp"), predictions(f"{boxes}-crg-refer", "refexp")
        for kind in ("intrinsic", "relational"):
            chosen = [it for it in items(boxes, "refexp") if it.meta["kind"] == kind]
            row = summary["refexp"][f"{boxes}/refer"][kind]
            assert row["n"] == len(chosen)
            hits = [[iou(b, it.target) >= 0.5 for b in it.proposals] for it in chosen]
            assert row["random"] == pytest.approx(np.mean([sum(h) / len(h) for h in hits]))
            assert row["oracle"] == pytest.approx(np.mean([any(h) for h in hits]))
            for name, p in (("crop", crop), ("crg", crg)):
                assert row[name] == pytest.approx(
                    np.mean([iou(p[it.id]["pred_box"], it.target) >= 0.5 for it in chosen])
                )
            assert row["crg-crop"]["delta"] == pytest.approx(row["crg"] - row["crop"])
        entry = summary["refexp"][f"{boxes}/refer"]
        assert entry["all"]["crg"] == pytest.approx(entry["runner"]["crg"])  # the runner's own acc@0.5

    # a rerun computes nothing: every prediction is read back, the numbers are the same
    def no_model(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(ModelMethod, "predict", no_model)
    again = run_experiment("crg", out_dir=tmp_path / "again", budget="tiny", work_dir=work, model=tiny_model_dir)

    def text(data):  # NaN != NaN: compare the JSON texts
        return json.dumps(data["summary"], sort_keys=True, default=list)

    assert text(again.data) == text(result.data)


def test_prior_gap_against_brute_force():
    # H1.1's statistic on items with repeats (a bootstrap resample): the gain on the prior-inconsistent items minus
    # the gain on the prior-consistent ones, each a mean over the resampled items of its group
    rng = np.random.default_rng(1)
    n = 40
    consistent = rng.random(n) < 0.3
    base = {"ids": list(range(n)), "correct": rng.integers(0, 2, n).astype(float), "prior_consistent": consistent}
    other = {"ids": list(range(n)), "correct": rng.integers(0, 2, n).astype(float)}
    for index in (np.arange(n), rng.integers(0, n, n)):
        gains = {c: [other["correct"][i] - base["correct"][i] for i in index if consistent[i] == c] for c in (0, 1)}
        brute = sum(gains[0]) / len(gains[0]) - sum(gains[1]) / len(gains[1])
        assert prior_gap(base, other, index) == pytest.approx(brute)
    with pytest.raises(ValueError, match="empty"):
        prior_gap(base, other, np.flatnonzero(consistent))
    stat = compare("spatial", base, other, 50)
    assert stat["delta"] == pytest.approx(other["correct"].mean() - base["correct"].mean())
    assert stat["ci"][0] <= stat["delta"] <= stat["ci"][1]


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
    # An undefined statistic (one class left in a resample) skips that resample; any other error propagates.
    from vcontrast.bench.metrics import UndefinedMetricError, auroc

    labels = np.array([0, 1, 0, 1])
    low, high = paired_bootstrap(lambda i: auroc(labels[i], labels[i]), 4, 100)
    assert low == high == 1.0
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(lambda i: auroc(labels[i], np.full(len(i), np.nan)), 4, 10)
    with pytest.raises(UndefinedMetricError):
        auroc([1, 1], [0.2, 0.3])
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
    assert result.exit_code == 0 and "--vision-steps" in result.output and "--grounding" in result.output


def test_grounding_option_parses_task_steps_pairs():
    assert parse_phases("") == []
    assert parse_phases("where:1500, spatial_lr:3000") == [("where", 1500), ("spatial_lr", 3000)]
    with pytest.raises(typer.BadParameter, match="'where:-5' must be TASK:STEPS"):
        parse_phases("where:-5")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["crg"])
def test_experiment_at_real_budget(tmp_path, name):
    # crg needs the shipped model; cal_noise and cal_scratch at the full budget take days (run them by --tier).
    result = run_experiment(name, out_dir=tmp_path, budget="full", work_dir=tmp_path / "work")
    assert len(result.files) == 3
