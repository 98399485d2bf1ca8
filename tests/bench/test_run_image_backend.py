"""The eval runner and the image backend: run.json records the backend a run used, a rerun on the other backend is
refused instead of mixing the two, and `image_backend=` / `--image-backend` pin one. Where torchvision is installed
(a typical GPU image), a checkpoint run pinned to PIL gives the in-memory PIL model's predictions exactly; run with
transformers' default there, image 0's CRG scores moved by 3e-2 nats (the "GPU eval-runner bug" of docs/crg.md)."""

import json

import numpy as np
import pytest
import transformers.utils
import typer
from typer.testing import CliRunner

import vcontrast.models.image_backend
from tests import tiny_models as tm
from tests.bench.test_runner_model import toy_items
from tests.models.test_image_backend import HAS_TORCHVISION, needs_torchvision
from vcontrast.bench.cli import eval_command
from vcontrast.bench.methods import get_method
from vcontrast.bench.runner import PREDICTIONS_FILE, RUN_FILE, evaluate, read_predictions

COMMON = {"method": "crg", "batch_size": 4, "show_progress": False, "proposer": None, "max_new_tokens": 3}


def run_record(out_dir) -> dict:
    return json.loads((out_dir / RUN_FILE).read_text())


def test_run_json_records_the_backend_and_a_rerun_on_the_other_is_refused(tmp_path, monkeypatch):
    data, folder = toy_items(tmp_path / "data"), tm.save_checkpoint(tmp_path / "ckpt")
    default, other = ("torchvision", "pil") if HAS_TORCHVISION else ("pil", "torchvision")  # transformers' choice
    evaluate("toy", data, model=folder, out_dir=tmp_path / "ckpt-run", limit=1, **COMMON)
    assert run_record(tmp_path / "ckpt-run")["image_backend"] == default
    evaluate("toy", data, model=tm.build("llava"), out_dir=tmp_path / "pair-run", limit=1, **COMMON)
    assert run_record(tmp_path / "pair-run")["image_backend"] == "pil"
    evaluate("toy", data, model=None, out_dir=tmp_path / "toy-run", limit=1, **COMMON)  # the shipped toy model
    assert run_record(tmp_path / "toy-run")["image_backend"] == "pil"  # its training backend, wherever it runs
    # the same folder on a machine where the other backend is the default: refused before the model loads
    monkeypatch.setattr(vcontrast.models.image_backend, "image_backend_of", lambda processor: other)
    with pytest.raises(ValueError, match=f'image_backend: was "{default}", now "{other}"'):
        evaluate("toy", data, model=folder, out_dir=tmp_path / "ckpt-run", **COMMON)


def test_a_run_json_from_before_the_field_resumes_with_a_warning(tmp_path, caplog):
    data, out = toy_items(tmp_path / "data"), tmp_path / "out"
    evaluate("toy", data, model=tm.build("llava"), out_dir=out, limit=1, **COMMON)
    record = run_record(out)
    del record["image_backend"]  # as vcontrast wrote it before recording the backend
    (out / RUN_FILE).write_text(json.dumps(record))
    with caplog.at_level("WARNING", logger="vcontrast.bench.runner"):
        summary = evaluate("toy", data, model=tm.build("llava"), out_dir=out, limit=2, **COMMON)
    assert summary["n_items"] == 2  # the first item resumed, the second computed
    assert "written before vcontrast recorded image_backend; resuming it as a run with image_backend='pil'" in (
        caplog.text
    )


def test_image_backend_arguments_are_checked(tmp_path, monkeypatch):
    data = toy_items(tmp_path / "data")
    model, processor = tm.build("llava")
    with pytest.raises(ValueError, match="`image_backend` is for a method given by name"):
        evaluate("toy", data, method=get_method("base", model, processor), image_backend="pil", out_dir=tmp_path / "a")
    monkeypatch.setattr(transformers.utils, "is_torchvision_available", lambda: True)
    with pytest.raises(ValueError, match=r"`image_backend` \(='torchvision'\) differs from the given processor's"):
        evaluate("toy", data, model=(model, processor), image_backend="torchvision", out_dir=tmp_path / "b", **COMMON)
    assert not (tmp_path / "b" / RUN_FILE).exists()


def test_cli_image_backend(tmp_path):
    data, folder = toy_items(tmp_path / "data"), tm.save_checkpoint(tmp_path / "ckpt")
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.callback()(lambda: None)
    args = ["eval", "--benchmark", "toy", "--data-dir", str(data), "--model", str(folder), "--no-progress"]
    args += ["--proposer", "none", "--limit", "1"]
    bad = CliRunner().invoke(app, [*args, "--image-backend", "opencv", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "image backend 'opencv' is not one of 'pil', 'torchvision'" in bad.output
    good = CliRunner().invoke(app, [*args, "--image-backend", "pil", "--out", str(tmp_path / "good")])
    assert good.exit_code == 0, good.output
    assert run_record(tmp_path / "good")["image_backend"] == "pil"


@needs_torchvision
def test_pinning_pil_where_torchvision_is_installed(tmp_path):
    data, folder = toy_items(tmp_path / "data"), tm.save_checkpoint(tmp_path / "ckpt")
    evaluate("toy", data, model=tm.build("llava"), out_dir=tmp_path / "memory", **COMMON)
    evaluate("toy", data, model=folder, image_backend="pil", out_dir=tmp_path / "pil", **COMMON)
    evaluate("toy", data, model=folder, out_dir=tmp_path / "default", **COMMON)
    assert run_record(tmp_path / "default")["image_backend"] == "torchvision"
    runs = {name: read_predictions(tmp_path / name / PREDICTIONS_FILE) for name in ("memory", "pil", "default")}
    for key in ("c0", "c1"):
        assert runs["pil"][key]["scores"] == runs["memory"][key]["scores"]
    # torchvision resizes image 0 to other pixel values (about one grey level), which moves its scores
    assert np.abs(np.subtract(runs["default"]["c0"]["scores"], runs["memory"]["c0"]["scores"])).max() > 1e-3
