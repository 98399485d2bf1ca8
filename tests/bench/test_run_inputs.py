"""Resume is bound to its inputs: run.json records data-file fingerprints, the model and the options, and a rerun
with any of them changed is refused with a message naming what differs (overwrite=True starts over). Validation of
every row and image happens before the model loads, and the CLI turns it into exit 2."""

import csv
import json
import re

import pytest
import typer
from typer.testing import CliRunner

from tests.bench.test_refcoco import write_refer
from tests.bench.test_runner import FakeMethod, run, write_seetrue, write_sugarcrepe
from vcontrast.bench import runner
from vcontrast.bench.cli import eval_command
from vcontrast.bench.fingerprint import file_fingerprint
from vcontrast.bench.runner import PREDICTIONS_FILE, RUN_FILE, evaluate, read_predictions


def _rewrite_seetrue(root, labels):
    with (root / "SeeTRUE.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "label", "original_dataset_id", "dataset_source"])
        for i, label in enumerate(labels):
            w.writerow([f"{i}.png", f"another text {i}", label, str(i), "Winoground"])


def test_run_json_records_data_model_and_options(tmp_path, make_image):
    data = write_seetrue(tmp_path / "data", make_image)
    run(data, tmp_path / "out", benchmark="seetrue")
    recorded = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    assert recorded["data"] == {"options": {}, "files": {"SeeTRUE.csv": file_fingerprint(data / "SeeTRUE.csv")}}
    assert recorded["benchmark"] == "seetrue" and recorded["method"] == "fake" and recorded["model"] is None


def test_changed_data_file_is_refused_then_overwrite_starts_over(tmp_path, make_image):
    # the reported failure: a different SeeTRUE CSV into the same --out reused the old predictions
    data = write_seetrue(tmp_path / "data", make_image)
    run(data, tmp_path / "out", benchmark="seetrue")
    _rewrite_seetrue(data, [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"different run: data.files.SeeTRUE.csv.sha256: was .* --overwrite"):
        run(data, tmp_path / "out", benchmark="seetrue")
    method = FakeMethod()
    fresh = run(data, tmp_path / "out", method, benchmark="seetrue", overwrite=True)
    assert sum(map(len, method.calls)) == 4  # nothing reused
    assert fresh == run(data, tmp_path / "ref", benchmark="seetrue")
    assert read_predictions(tmp_path / "out" / PREDICTIONS_FILE) == read_predictions(
        tmp_path / "ref" / PREDICTIONS_FILE
    )


def test_moved_copy_of_the_same_data_resumes(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=3)
    first = run(data, tmp_path / "out")
    moved = tmp_path / "moved"
    data.rename(moved)
    again = FakeMethod()
    assert run(moved, tmp_path / "out", again) == first and again.calls == []


def test_changed_model_or_loader_option_is_refused(tmp_path, make_image):
    data = write_refer(tmp_path / "refer", make_image)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava"}')
    (model / "model.safetensors").write_bytes(b"0" * 10)
    method = FakeRefexp()
    run(data, tmp_path / "out", method, benchmark="refcoco", model=str(model), split="testA")
    (model / "config.json").write_text('{"model_type": "llava", "vocab_size": 3}')
    with pytest.raises(ValueError, match=r"different run: model.files.config.json.sha256"):
        run(data, tmp_path / "out", method, benchmark="refcoco", model=str(model), split="testA")
    (model / "config.json").write_text('{"model_type": "llava"}')
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"det_id": 0, "box": [30, 10, 20, 20], "image_id": 581857, "score": 1.0}]))
    with pytest.raises(ValueError, match=r"different run: data.files.*dets.json: not recorded before.*proposals"):
        run(data, tmp_path / "out", method, benchmark="refcoco", model=str(model), split="testA", proposals=dets)
    # explicit "gt" is the default: the same run
    assert run(data, tmp_path / "out", method, benchmark="refcoco", model=str(model), split="testA", proposals="gt")


class FakeRefexp:
    name = "fake-refexp"

    def __init__(self):
        self.config = {}

    def predict(self, items, images):
        return [{"pred_index": 0} for _ in items]


def test_validation_happens_before_the_model_loads(tmp_path, make_image, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load before the data is validated")

    monkeypatch.setattr(runner, "_build_method", no_model)
    data = write_seetrue(tmp_path / "data", make_image)
    (data / "images" / "3.png").unlink()  # the last row's image: found before any batch runs
    with pytest.raises(ValueError, match=r"SeeTRUE.csv, line 5: `image` names an image not found"):
        evaluate("seetrue", data, method="crg", out_dir=tmp_path / "out", show_progress=False)
    (data / "images" / "2.png").write_bytes(b"not an image")
    make_image(data / "images" / "3.png")
    with pytest.raises(ValueError, match=r"item 'Winoground/2': `image` .*2.png is not a readable image"):
        evaluate("seetrue", data, method="crg", out_dir=tmp_path / "out", show_progress=False)
    toy = tmp_path / "toy"
    toy.mkdir()
    row = {"id": "q7", "task": "vqa", "image": "images/missing.png", "prompt": "what?", "answer": "a"}
    (toy / "vqa_test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"vqa_test.jsonl:1: item 'q7': `image` file .*missing.png does not exist"):
        evaluate("toy", toy, method="base", out_dir=tmp_path / "out2", show_progress=False)


def _cli(args):
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.callback()(lambda: None)
    return CliRunner().invoke(app, ["eval", *args])


def test_cli_user_errors_exit_2_with_a_short_message(tmp_path, make_image):
    data = write_seetrue(tmp_path / "data", make_image)
    _rewrite_seetrue(data, [1, "maybe", 0, 1])
    result = _cli(["--benchmark", "seetrue", "--data-dir", str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: seetrue: {data / 'SeeTRUE.csv'}, line 3: `label` (='maybe') must be 0 or 1"
    ]
    result = _cli(["--benchmark", "seetrue", "--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: seetrue: data folder {tmp_path / 'nowhere'} does not exist.",
        "  expected layout: docs/eval.md, 'The benchmarks'",
    ]
    result = _cli(["--benchmark", "seetrue", "--data-dir", str(data), "--image-root", str(tmp_path)])
    assert result.exit_code == 2 and "image_root do not apply to this benchmark (it takes none)" in result.output
    result = _cli(["--benchmark", "refcoco", "--data-dir", str(data), "--split-by", "umd"])
    assert result.exit_code == 2 and "`split_by` (='umd') must be one of unc, google" in result.output
    _rewrite_seetrue(data, [1, 0, 1, 0])
    (tmp_path / "afile").write_text("")
    result = _cli(["--benchmark", "seetrue", "--data-dir", str(data), "--out", str(tmp_path / "afile")])
    assert result.exit_code == 2 and "is a file; give a folder" in result.output


class RecordingRefexp(FakeRefexp):
    def __init__(self):
        super().__init__()
        self.proposals = []

    def predict(self, items, images):
        self.proposals += [item.proposals for item in items]
        return [{"pred_box": [0, 0, 10, 20]} for _ in items]


def test_proposals_option_selects_the_loader_setting(tmp_path, make_image):
    data = write_refer(tmp_path / "refer", make_image)
    method = RecordingRefexp()
    run(data, tmp_path / "gt", method, benchmark="refcoco", split="val")
    assert method.proposals == [[(0.0, 0.0, 10.0, 20.0), (30.0, 10.0, 50.0, 30.0)]]
    method = RecordingRefexp()
    summary = run(data, tmp_path / "proposer", method, benchmark="refcoco", split="val", proposals="proposer")
    assert method.proposals == [[]]  # the method takes them from its region proposer
    assert summary["data"]["options"] == {"proposals": "proposer"} and summary["metrics"]["acc@0.5"] == 1.0


def test_model_in_memory_is_identified_by_its_weights():
    # A (model, processor) pair has no files to hash: its identity is the shared weights fingerprint, so a resume
    # with other weights of the same class and size is refused (a parameter count alone could not tell them apart).
    import copy

    import torch

    from tests import tiny_models as tm
    from vcontrast.bench.fingerprint import model_identity

    model, processor = tm.build("llava")
    same = model_identity((copy.deepcopy(model), processor))
    assert model_identity((model, processor)) == same
    assert same["model_class"] == "LlavaForConditionalGeneration"
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1.0
    changed = model_identity((other, processor))
    assert changed["model_weights"] != same["model_weights"] and changed["model_config"] == same["model_config"]


def _model_folder(root):
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llava"}')
    (root / "tokenizer.json").write_text('{"model": {}}')
    (root / "chat_template.jinja").write_text("USER: {{ messages }} ASSISTANT:")
    (root / "processor_config.json").write_text('{"image_processor": {"image_mean": [0.5, 0.5, 0.5]}}')
    (root / "tokenizer_config.json").write_text('{"model_max_length": 512}')
    (root / "modeling_custom.py").write_text("# remote code\n")
    (root / "model.safetensors").write_bytes(b"0" * 10)
    (root / "README.md").write_text("not part of the fingerprint")
    return root


def test_chat_template_and_processor_settings_are_part_of_the_model(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=2)
    model = _model_folder(tmp_path / "model")
    run(data, tmp_path / "out", model=str(model))
    recorded = json.loads((tmp_path / "out" / RUN_FILE).read_text())["model"]["files"]
    assert set(recorded) == {
        "chat_template.jinja",
        "config.json",
        "model.safetensors",
        "modeling_custom.py",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert recorded["model.safetensors"] == {"size": 10}
    (model / "README.md").write_text("edited")  # not a file the model reads
    assert run(data, tmp_path / "out", model=str(model))["n_items"] == 2
    for name, text in (("chat_template.jinja", "USER: {{ messages }} BOT:"), ("processor_config.json", "{}")):
        before = (model / name).read_text()
        (model / name).write_text(text)
        with pytest.raises(ValueError, match=rf"different run: model.files.{name}.sha256: was "):
            run(data, tmp_path / "out", model=str(model))
        (model / name).write_text(before)


def _as_older_vcontrast_wrote_it(run_json):
    # vcontrast until 2026-12 hashed config.json, generation_config.json, preprocessor_config.json and tokenizer.json
    record = json.loads(run_json.read_text())
    files = record["model"]["files"]
    record["model"]["files"] = {k: files[k] for k in ("config.json", "model.safetensors", "tokenizer.json")}
    run_json.write_text(json.dumps(record))


def test_older_run_json_resumes_with_a_warning_naming_the_files_now_hashed(tmp_path, make_image, caplog):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=2)
    model = _model_folder(tmp_path / "model")
    first = run(data, tmp_path / "out", model=str(model))
    _as_older_vcontrast_wrote_it(tmp_path / "out" / RUN_FILE)
    again = FakeMethod()
    with caplog.at_level("WARNING", logger="vcontrast.bench.fingerprint"):
        assert run(data, tmp_path / "out", again, model=str(model)) == first
    assert again.calls == []
    assert "older vcontrast" in caplog.text
    assert "chat_template.jinja, modeling_custom.py, processor_config.json, tokenizer_config.json" in caplog.text


def test_older_run_json_of_another_model_is_refused(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=2)
    model = _model_folder(tmp_path / "model")
    run(data, tmp_path / "out", model=str(model))
    _as_older_vcontrast_wrote_it(tmp_path / "out" / RUN_FILE)
    (model / "config.json").write_text('{"model_type": "llava", "vocab_size": 3}')  # a file older vcontrast hashed
    with pytest.raises(ValueError, match=r"different run: .*model.files.config.json.sha256: was "):
        run(data, tmp_path / "out", model=str(model))
    (model / "config.json").write_text('{"model_type": "llava"}')
    (model / "generation_config.json").write_text("{}")  # older vcontrast would have recorded it: not an old record
    with pytest.raises(ValueError, match=r"model.files.generation_config.json: not recorded before"):
        run(data, tmp_path / "out", model=str(model))


def test_a_box_outside_its_image_stops_the_run_before_the_model_loads(tmp_path, make_image):
    # It failed only once the model had loaded and earlier batches were written.
    make_image(tmp_path / "toy" / "images" / "a.png", size=(16, 12))
    good = {"id": "a", "task": "vqa", "image": "images/a.png", "prompt": "what?", "answer": "x"}
    rows = [good, {**good, "id": "b", "regions": [[2, 2, 8, 8], [20, 2, 30, 8]]}]
    (tmp_path / "toy" / "vqa_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    method = FakeMethod()
    with pytest.raises(ValueError, match=r"toy: item 'b': `regions\[1\]` box \(20.0, 2.0, 30.0, 8.0\) lies entirely"):
        run(tmp_path / "toy", tmp_path / "out", method, benchmark="toy")
    assert method.calls == [] and not (tmp_path / "out").exists()
    refexp = {"id": "r", "task": "refexp", "image": "images/a.png", "prompt": "the cup"}
    for field, value, name in (
        ("proposals", [[0, 0, 4, 4], [0, 13, 4, 20]], "proposals[1]"),
        ("target", [0, 40, 4, 50], "target"),
    ):
        (tmp_path / "toy" / "vqa_test.jsonl").write_text(json.dumps({**refexp, field: value}) + "\n")
        with pytest.raises(ValueError, match=rf"item 'r': `{re.escape(name)}` box .* lies entirely outside the image"):
            run(tmp_path / "toy", tmp_path / "out", method, benchmark="toy")


def test_crop_refuses_an_inverted_box():
    from PIL import Image

    from vcontrast.bench.methods import _crop

    image = Image.new("RGB", (16, 12))
    assert _crop(image, (2, 2, 2, 2)).size == (1, 1)  # a thin box keeps one pixel
    with pytest.raises(ValueError, match=r"box \(10, 2, 4, 8\) is inverted"):
        _crop(image, (10, 2, 4, 8))


def test_alpha_that_has_no_effect_is_refused(tmp_path, make_image, monkeypatch):
    # crg re-ranks referring expressions by the alpha-free log-ratio: an alpha sweep gave identical numbers
    data = write_refer(tmp_path / "refer", make_image)
    built = []

    def fake_build(method, *args, **kwargs):
        built.append(method)
        return FakeRefexp()

    monkeypatch.setattr(runner, "_build_method", fake_build)
    for method in ("crg", "crg+overlay"):
        with pytest.raises(
            ValueError, match=rf"`alpha` \(=2.0\) has no effect on method '{re.escape(method)}' for refexp"
        ):
            evaluate("refcoco", data, method=method, alpha=2.0, out_dir=tmp_path / "out", show_progress=False)
    assert built == [] and not (tmp_path / "out").exists()
    # the default is accepted, and alpha still matters where the method's refexp scores depend on it (vcd)
    summary = evaluate("refcoco", data, method="crg", out_dir=tmp_path / "crg", show_progress=False)
    assert summary["config"]["alpha"] == 1.0
    summary = evaluate("refcoco", data, method="vcd", alpha=2.0, out_dir=tmp_path / "vcd", show_progress=False)
    assert summary["config"]["alpha"] == 2.0 and built == ["crg", "vcd"]
    # a run that also holds other tasks: alpha changes those
    from vcontrast.bench.methods import check_alpha_has_effect

    check_alpha_has_effect("crg", 2.0, {"refexp", "match"})
    check_alpha_has_effect("base", 2.0, {"refexp"})  # base takes no alpha at all
