"""The eval runner's machinery with a fake method: files written as it goes, resume after a crash or a torn line,
run.json guard, batching, metrics on hand-computed values, ViP-Bench grader files, the CLI function."""

import csv
import json
import sys

import pytest
import typer
from typer.testing import CliRunner

from vcontrast.bench.cli import eval_command
from vcontrast.bench.items import Item
from vcontrast.bench.methods import Method
from vcontrast.bench.runner import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    RUN_FILE,
    evaluate,
    format_table,
    make_batches,
    merge_predictions,
    read_predictions,
)


class FakeMethod:
    """Deterministic predictions from the item id's number `k` and the image; optionally crashes after `fail_after`
    items."""

    name = "fake"

    def __init__(self, fail_after=None, config=None):
        self.config = config or {"version": 1}
        self.fail_after = fail_after
        self.calls = []

    def predict(self, items, images):
        if self.fail_after is not None and sum(map(len, self.calls)) + len(items) > self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append([item.id for item in items])
        return [fake_prediction(item, image) for item, image in zip(items, images, strict=True)]


def fake_prediction(item, image):
    k = int(item.id.rsplit("/", 1)[-1].split("_")[-1].lstrip("v"))
    size = list(image.size)
    if item.task == "choice":
        scores = [0.0] * len(item.candidates)
        scores[k % len(scores)] = 1.0  # gold is 0: correct iff k % n == 0
        return {"scores": scores, "size": size}
    if item.task == "match":
        return {"p_yes": [0.9, 0.6, 0.6, 0.2][k % 4], "size": size}
    return {"text": f"answer {k}", "size": size}


def write_sugarcrepe(root, make_image, n=5, split="swap_att"):
    data = {}
    for i in range(n):
        make_image(root / "val2017" / f"{i:012d}.jpg", size=(16 + i, 12))
        data[str(i)] = {"filename": f"{i:012d}.jpg", "caption": f"a white cat {i}", "negative_caption": "a dog"}
    (root / f"{split}.json").write_text(json.dumps(data))
    return root


def write_seetrue(root, make_image):
    root.mkdir(parents=True, exist_ok=True)
    with (root / "SeeTRUE.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "label", "original_dataset_id", "dataset_source"])
        for i, label in enumerate([1, 0, 1, 0]):
            make_image(root / "images" / f"{i}.png")
            w.writerow([f"{i}.png", f"text {i}", label, str(i), "Winoground"])
    return root


def write_vipbench(root, make_image, n=3):
    meta = {}
    for split in ("bbox", "human"):
        lines = []
        for i in range(n):
            make_image(root / split / "images" / f"v1_{i}.png")
            lines.append(json.dumps({"question_id": i, "image": f"v1_{i}.png", "text": f"What is in box {i}?"}))
            meta[f"v1_{i}"] = {"image": f"v1_{i}.png", "image_source": f"v1_{i}.png", "question": "<obj>?"}
            meta[f"v1_{i}"].update(answer="a cat", capability=["rec"])
        (root / split / "questions.jsonl").write_text("\n".join(lines) + "\n")
    (root / "vip-bench-meta-data.json").write_text(json.dumps(meta))
    return root


def run(data, out, method=None, benchmark="sugarcrepe", **kwargs):
    return evaluate(benchmark, data, method=method or FakeMethod(), out_dir=out, show_progress=False, **kwargs)


def lines(path):
    return path.read_text().splitlines()


def test_writes_predictions_and_metrics(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image)
    method = FakeMethod()
    summary = run(data, tmp_path / "out", method, batch_size=2)
    out = tmp_path / "out"
    # k = 0, 2, 4 of 5 correct (the fake prefers candidate k % 2)
    assert summary["metrics"] == {"accuracy": pytest.approx(0.6)}
    assert summary["n_items"] == 5 and summary["method"] == "fake" and summary["config"] == {"version": 1}
    assert json.loads((out / METRICS_FILE).read_text()) == summary
    rows = [json.loads(line) for line in lines(out / PREDICTIONS_FILE)]
    assert [r["id"] for r in rows] == [f"swap_att/{i}" for i in range(5)]
    assert rows[3] == {"id": "swap_att/3", "scores": [0.0, 1.0], "size": [19, 12]}  # the item's own image
    assert method.calls == [["swap_att/0", "swap_att/1"], ["swap_att/2", "swap_att/3"], ["swap_att/4"]]
    assert not list(out.glob("predictions.part*.jsonl"))  # merged
    assert json.loads((out / RUN_FILE).read_text())["benchmark"] == "sugarcrepe"
    # a finished run reruns without predicting anything
    again = FakeMethod()
    assert run(data, out, again, batch_size=2) == summary and again.calls == []


def test_crash_then_resume_gives_the_same_result(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=7)
    reference = run(data, tmp_path / "ref", batch_size=2)

    crashing = FakeMethod(fail_after=3)  # the second batch fits, the third raises
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(data, tmp_path / "out", crashing, batch_size=2)
    part = tmp_path / "out" / "predictions.part0.jsonl"
    assert len(lines(part)) == 2 and not (tmp_path / "out" / METRICS_FILE).exists()
    assert len(read_predictions(part)) == 2

    resumed = FakeMethod()
    assert run(data, tmp_path / "out", resumed, batch_size=2) == reference
    assert resumed.calls == [["swap_att/2", "swap_att/3"], ["swap_att/4", "swap_att/5"], ["swap_att/6"]]
    assert (tmp_path / "out" / PREDICTIONS_FILE).read_bytes() == (tmp_path / "ref" / PREDICTIONS_FILE).read_bytes()


def interrupted_run(tmp_path, make_image):
    # A finished reference run of 4 items, and an output folder holding only its run.json (predictions to be written
    # by the test as an interrupted run left them).
    data = write_sugarcrepe(tmp_path / "data", make_image, n=4)
    reference = run(data, tmp_path / "ref", batch_size=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_FILE).write_text((tmp_path / "ref" / RUN_FILE).read_text())
    return data, reference, out, lines(tmp_path / "ref" / PREDICTIONS_FILE)


def test_torn_last_line_is_ignored_and_cut(tmp_path, make_image):
    data, reference, out, ref_lines = interrupted_run(tmp_path, make_image)
    # a crash in the middle of writing the second batch: one whole line, then half of the next
    torn = ref_lines[0] + "\n" + ref_lines[1] + "\n" + ref_lines[2] + "\n" + ref_lines[3][:17]
    (out / "predictions.part0.jsonl").write_text(torn)
    assert list(read_predictions(out / "predictions.part0.jsonl")) == ["swap_att/0", "swap_att/1", "swap_att/2"]

    resumed = FakeMethod()
    assert run(data, out, resumed, batch_size=2) == reference
    assert resumed.calls == [["swap_att/2", "swap_att/3"]]  # the half-done batch runs whole
    assert (out / PREDICTIONS_FILE).read_bytes() == (tmp_path / "ref" / PREDICTIONS_FILE).read_bytes()


def test_whole_last_line_without_newline_is_kept(tmp_path, make_image):
    # A whole JSON object cannot be a torn write (no proper prefix of an object is one): only its newline is missing.
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}')
    assert read_predictions(path) == {"a": {"x": 1}, "b": {"x": 2}}
    path.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": ')
    assert list(read_predictions(path)) == ["a"]

    data, reference, out, ref_lines = interrupted_run(tmp_path, make_image)
    (out / "predictions.part0.jsonl").write_text(ref_lines[0] + "\n" + ref_lines[1])  # first batch, no final newline
    resumed = FakeMethod()
    assert run(data, out, resumed, batch_size=2) == reference
    assert resumed.calls == [["swap_att/2", "swap_att/3"]]  # the first batch is not recomputed
    assert (out / PREDICTIONS_FILE).read_bytes() == (tmp_path / "ref" / PREDICTIONS_FILE).read_bytes()


def test_repair_ends_a_whole_last_line_and_cuts_a_torn_one(tmp_path):
    from vcontrast.bench.runner import _repair

    path = tmp_path / "p.jsonl"
    for text, repaired in (
        ('{"id": "a"}', '{"id": "a"}\n'),
        ('{"id": "a"}\n{"id": "b"', '{"id": "a"}\n'),
        ('{"id": "a"}\n', '{"id": "a"}\n'),
        ("", ""),
    ):
        path.write_text(text)
        _repair(path)
        assert path.read_text() == repaired


def test_corrupt_middle_line_raises(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.part0.jsonl").write_text('{"id": "swap_att/0", "scores": [1, 0]}\n{oops\n{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"predictions.part0.jsonl:2 is not valid JSON"):
        run(data, out)
    (out / "predictions.part0.jsonl").write_text('["no id"]\n{"id": "x"}\n')
    with pytest.raises(ValueError, match="string `id`"):
        run(data, out)


def test_out_dir_of_another_run_is_refused(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=2)
    run(data, tmp_path / "out")
    with pytest.raises(ValueError, match=r"different run: config.version: was 1, now 2\. .*--overwrite"):
        run(data, tmp_path / "out", FakeMethod(config={"version": 2}))
    with pytest.raises(ValueError, match='different run: split: was null, now "swap_att"'):
        run(data, tmp_path / "out", split="swap_att")


def test_larger_limit_reuses_predictions(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=5)
    small = run(data, tmp_path / "out", limit=2)
    assert small["n_items"] == 2 and small["metrics"]["accuracy"] == 0.5
    method = FakeMethod()
    full = run(data, tmp_path / "out", method, limit=None, batch_size=8)
    assert full["n_items"] == 5 and method.calls == [[f"swap_att/{i}" for i in range(5)]]  # batch of 5 pending
    # a smaller limit afterwards scores its items only but keeps every prediction in the file
    assert run(data, tmp_path / "out", limit=1)["n_items"] == 1
    assert len(read_predictions(tmp_path / "out" / PREDICTIONS_FILE)) == 5


def test_make_batches_group_tasks_in_order():
    items = [
        Item(id=str(i), task=task, image="x.png", prompt="p", candidates=["a"], answer=0, label=1)
        for i, task in enumerate(["choice", "match", "choice", "choice", "match", "choice"])
    ]
    batches = make_batches(items, 2)
    assert [[it.id for it in b] for b in batches] == [["0", "2"], ["3", "5"], ["1", "4"]]
    assert make_batches(items, 2) == batches  # depends on the items and batch_size only
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            make_batches(items, bad)


def test_merge_keeps_item_order_and_removes_parts(tmp_path):
    (tmp_path / "predictions.part1.jsonl").write_text('{"id": "b", "v": 2}\n')
    (tmp_path / "predictions.part0.jsonl").write_text('{"id": "c", "v": 3}\n{"id": "a", "v": 1}\n')
    items = [Item(id=k, task="vqa", image="x", prompt="p") for k in "abc"]
    merged = merge_predictions(tmp_path, items)
    assert list(merged) == ["a", "b", "c"] and merged["b"] == {"v": 2}
    assert lines(tmp_path / PREDICTIONS_FILE)[0] == '{"id": "a", "v": 1}'
    assert not list(tmp_path.glob("predictions.part*"))


def test_match_metrics_and_undefined_metric(tmp_path, make_image):
    data = write_seetrue(tmp_path / "data", make_image)
    summary = run(data, tmp_path / "out", benchmark="seetrue")
    # p_yes 0.9, 0.6 (neg), 0.6, 0.2 (neg): AUROC (1 + 1 + 0.5 + 1) / 4; F1: TP 2, FP 1 -> 0.8
    assert summary["metrics"]["auroc"] == 0.875 and summary["metrics"]["f1"] == pytest.approx(0.8)
    one_class = run(data, tmp_path / "one", benchmark="seetrue", limit=1)
    # AUROC is undefined on one class: only that entry is left out, and metrics_error says why
    assert one_class["metrics"] == {"f1": 1.0}
    assert (
        one_class["metrics_error"] == "auroc is undefined: AUROC needs both classes, got 1 positives and 0 negatives"
    )


def test_an_undefined_metric_leaves_the_others(tmp_path, make_image):
    # The reported failure: match/auroc of a --limit holding one class wiped every metric of a toy run.
    make_image(tmp_path / "toy" / "images" / "a.png")
    choice = {"task": "choice", "image": "images/a.png", "prompt": "which?", "candidates": ["a", "b"], "answer": 0}
    match = {"task": "match", "image": "images/a.png", "prompt": "a cat", "label": 1}
    for name, rows in (
        ("choice_test", [{**choice, "id": f"c_{k}"} for k in range(2)]),
        ("match_test", [{**match, "id": "m_0"}]),
    ):
        (tmp_path / "toy" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run(tmp_path / "toy", tmp_path / "out", benchmark="toy")
    assert summary["metrics"]["choice/accuracy"] == 0.5 and summary["metrics"]["match/f1"] == 1.0
    assert "match/auroc" not in summary["metrics"] and "match_test/match/auroc" not in summary["metrics"]
    assert summary["metrics_error"].startswith("match/auroc is undefined: AUROC needs both classes")
    assert "match_test/match/auroc is undefined" in summary["metrics_error"]  # per file, recorded the same way
    assert json.loads((tmp_path / "out" / METRICS_FILE).read_text()) == summary
    # a malformed prediction still leaves no metric at all (a bug to see, not an undefined entry)
    (tmp_path / "out" / PREDICTIONS_FILE).write_text(
        (tmp_path / "out" / PREDICTIONS_FILE).read_text().replace('"p_yes"', '"q_yes"')
    )
    broken = run(tmp_path / "toy", tmp_path / "out", benchmark="toy")
    assert broken["metrics"] == {} and "lacks 'p_yes'" in broken["metrics_error"]


def test_vipbench_writes_grader_files(tmp_path, make_image):
    data = write_vipbench(tmp_path / "data", make_image)
    summary = run(data, tmp_path / "out", benchmark="vipbench")
    assert summary["metrics"] == {} and summary["grader_files"] == [
        "vipbench/fake-bbox.json",
        "vipbench/fake-human.json",
    ]
    files = sorted((tmp_path / "out" / "vipbench").iterdir())
    assert json.loads(files[0].read_text()) == {"v1_0": "answer 0", "v1_1": "answer 1", "v1_2": "answer 2"}
    assert summary["grader_files"] == [str(f.relative_to(tmp_path / "out")) for f in files]


def test_bad_arguments(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=1)
    with pytest.raises(ValueError, match="batch_size"):
        run(data, tmp_path / "out", batch_size=0)
    with pytest.raises(ValueError, match="`method` \\(='nope'\\)"):
        evaluate("sugarcrepe", data, method="nope", out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="`alpha` \\(=-1\\)"):  # checked before any model is loaded
        evaluate("sugarcrepe", data, method="crg", alpha=-1, out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="`model`"):
        evaluate("sugarcrepe", data, model=3, method="base", out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        run(data, tmp_path / "out", benchmark="nope")
    with pytest.raises(ValueError, match="`limit`"):
        run(data, tmp_path / "out", limit=-1)
    assert isinstance(FakeMethod(), Method)


def test_format_table():
    table = format_table(
        {
            "benchmark": "toy",
            "method": "crg",
            "config": {"alpha": 1.0},
            "n_items": 3,
            "metrics": {"choice/accuracy": 0.5, "match/auroc": 1.0},
            "regions_source": {"item": 2, "whole": 1},
        }
    )
    assert table.splitlines() == [
        "toy · crg · alpha 1.0 · 3 items",
        "metric           value",
        "---------------  ------",
        "choice/accuracy  0.5000",
        "match/auroc      1.0000",
        "regions: item 2, whole 1",
    ]


def test_cli_reports_bad_input(tmp_path):
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, ["eval", "--benchmark", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown benchmark 'nope'" in result.output


def test_runs_without_accelerate_on_one_process(tmp_path, make_image, monkeypatch):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=2)
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate -> ImportError
    assert run(data, tmp_path / "out")["n_items"] == 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE=2 but accelerate is not installed"):
        run(data, tmp_path / "out2")


def test_a_run_that_cannot_load_leaves_nothing_behind(tmp_path, make_image, monkeypatch):
    # The reported failure: the default proposer could not load offline, run.json and an empty part file stayed, and
    # the rerun the error message suggests (--proposer toy) was refused as "a different run".
    from vcontrast.bench import runner

    data = write_sugarcrepe(tmp_path / "data", make_image, n=3)

    def cannot_load(*args, **kwargs):
        raise OSError("cannot load the model offline")

    with monkeypatch.context() as m:
        m.setattr(runner, "_build_method", cannot_load)
        with pytest.raises(OSError, match="offline"):
            evaluate("sugarcrepe", data, method="base", out_dir=tmp_path / "new" / "out", show_progress=False)
        assert not (tmp_path / "new").exists()  # nor the parent it would have created
        (tmp_path / "mine").mkdir()
        with pytest.raises(OSError, match="offline"):
            evaluate("sugarcrepe", data, method="base", out_dir=tmp_path / "mine", show_progress=False)
        assert list((tmp_path / "mine").iterdir()) == []  # a folder that was there stays, empty

    # a method that fails at its first batch (a proposer loads when the first item needs it)
    failing = FakeMethod(fail_after=0, config={"proposer": "grounding-dino"})
    for out in (tmp_path / "out", tmp_path / "mine"):
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(data, out, failing, batch_size=2)
        assert not out.exists() or list(out.iterdir()) == []
        fixed = FakeMethod(config={"proposer": "toy"})
        assert run(data, out, fixed, batch_size=2)["config"] == {"proposer": "toy"}


def test_a_run_that_fails_after_predicting_keeps_its_files(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(data, tmp_path / "out", FakeMethod(fail_after=2), batch_size=2)
    assert (tmp_path / "out" / RUN_FILE).is_file()
    assert len(read_predictions(tmp_path / "out" / "predictions.part0.jsonl")) == 2


def test_overwrite_deletes_the_earlier_run_only_once_the_method_loads(tmp_path, make_image, monkeypatch):
    from vcontrast.bench import runner

    data = write_sugarcrepe(tmp_path / "data", make_image, n=2)
    evaluate("sugarcrepe", data, method=FakeMethod(), out_dir=tmp_path / "out", show_progress=False)
    before = (tmp_path / "out" / PREDICTIONS_FILE).read_text()

    def cannot_load(*args, **kwargs):
        raise OSError("cannot load the model offline")

    monkeypatch.setattr(runner, "_build_method", cannot_load)
    with pytest.raises(OSError, match="offline"):
        evaluate("sugarcrepe", data, method="base", out_dir=tmp_path / "out", show_progress=False, overwrite=True)
    assert (tmp_path / "out" / PREDICTIONS_FILE).read_text() == before
