"""The command line's error policy: each user error exits 2 with one line that names it, before any model loads.

Every case of issue #15 runs here in-process through `vcontrast.cli.run`; `test_scripted_run_of_all_cases` (slow)
runs them again as real `vcontrast` processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests import tiny_models as tm
from vcontrast.cli import is_user_error, run
from vcontrast.crg import cli as crg_cli
from vcontrast.models import loading


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "image.png"
    tm.image(0).save(path)
    return path


@pytest.fixture(scope="module")
def bomb_file(tmp_path_factory):
    # 14000 x 14000 pixels (above PIL's 2 x MAX_IMAGE_PIXELS) in 24 KB: one bit per pixel, all black.
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (14000, 14000)).save(path)
    return path


@pytest.fixture
def model_folder(tmp_path):
    """A complete save_pretrained folder of the tiny LLaVA (model and processor)."""
    return tm.save_checkpoint(tmp_path / "model")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test (exit 1, not 2) if any weights load: every check below must happen first."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    for cls in (AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def invoke(capsys, args):
    capsys.readouterr()  # drop what the fixtures printed
    code = run([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(result, *needles):
    code, out, err = result
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


ASK = ["ask", "IMAGE", "what is in the box ?", "--box", "2,2,12,10"]


def ask(image, *extra):
    return [image if a == "IMAGE" else a for a in ASK] + list(extra)


@pytest.mark.parametrize("alpha", ["nan", "-1", "inf"])
def test_bad_alpha(capsys, image_file, no_loading, alpha):
    assert_user_error(invoke(capsys, ask(image_file, "--alpha", alpha)), f"--alpha {float(alpha):g}", ">= 0")


def test_save_to_missing_folder_or_non_image_suffix(capsys, image_file, no_loading, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nonexistent" / "x.png"
    assert_user_error(invoke(capsys, ask(image_file, "--save", missing)), str(missing.parent), "does not exist")
    assert_user_error(invoke(capsys, ask(image_file, "--save", "x.txt")), "'x.txt'", ".png")
    assert_user_error(invoke(capsys, ask(image_file, "--save", tmp_path)), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_cpu_build(capsys, image_file, no_loading):
    assert_user_error(invoke(capsys, ask(image_file, "--device", "cuda")), "'cuda'", "leave the device out")


def test_unknown_device(capsys, image_file, no_loading):
    assert_user_error(invoke(capsys, ask(image_file, "--device", "banana")), "'banana'", "'cpu'")


def test_image_backend(capsys, image_file, no_loading, monkeypatch):
    assert_user_error(invoke(capsys, ask(image_file, "--image-backend", "fast")), "'fast'", "'pil', 'torchvision'")
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_torchvision_available", lambda: False)
    assert_user_error(invoke(capsys, ask(image_file, "--image-backend", "torchvision")), "needs torchvision")
    asked = []

    def spy(*args, **kwargs):  # the checked backend reaches load_model (a tiny LLaVA stands in for the toy model)
        asked.append(kwargs["image_backend"])
        return tm.build("llava")

    monkeypatch.setattr(loading, "load_model", spy)
    for command in (["score", image_file, "q ?", "a red cup"], ["rerank", image_file, "a red cup"]):
        code, _, err = invoke(capsys, [*command, "--box", "2,2,12,10", "--image-backend", "pil"])
        assert code == 0, err
    assert asked == ["pil", "pil"]


def test_decompression_bomb_image(capsys, bomb_file, no_loading):
    assert_user_error(invoke(capsys, ask(bomb_file)), str(bomb_file), "resize it")


def test_missing_image_and_bad_boxes(capsys, image_file, no_loading, tmp_path):
    assert_user_error(invoke(capsys, ask(tmp_path / "nope.png")), "nope.png", "not found")
    assert_user_error(invoke(capsys, ["ask", image_file, "what ?"]), "no --box given")
    assert_user_error(invoke(capsys, ["ask", image_file, "what ?", "--box", "1,2,3"]), "'1,2,3'", "four numbers")
    assert_user_error(invoke(capsys, ["ask", image_file, "what ?", "--box", "40,40,50,50"]), "outside the image")


def test_parser_errors_are_one_line_and_a_hint(capsys, image_file):
    for args in (["ask", image_file], [*ask(image_file), "--max-new-tokens", "x"], [*ask(image_file), "--nope"]):
        code, _, err = invoke(capsys, args)
        assert code == 2 and "Traceback" not in err
        assert err.splitlines()[0].startswith("error: ") and err.splitlines()[1] == "(see 'vcontrast ask --help')"


def test_bad_config_json(capsys, image_file, model_folder, no_loading):
    (model_folder / "config.json").write_text('{"model_type": "llava",')
    assert_user_error(invoke(capsys, ask(image_file, "--model", model_folder)), "config.json", "not valid JSON")
    (model_folder / "config.json").unlink()
    assert_user_error(invoke(capsys, ask(image_file, "--model", model_folder)), "has no config.json")


def test_truncated_safetensors(capsys, image_file, model_folder, no_loading):
    weights = model_folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_user_error(invoke(capsys, ask(image_file, "--model", model_folder)), "model.safetensors", "truncated")
    weights.write_bytes(data[:5])  # not even a header
    assert_user_error(invoke(capsys, ask(image_file, "--model", model_folder)), "model.safetensors", "truncated")


def test_no_processor_files(capsys, image_file, model_folder, no_loading):
    for name in ("processor_config.json", "preprocessor_config.json"):
        (model_folder / name).unlink(missing_ok=True)
    assert_user_error(
        invoke(capsys, ask(image_file, "--model", model_folder)), "no processor files", "processor.save_pretrained"
    )


def test_text_only_model_names_supported_families(capsys, image_file, tmp_path, no_loading):
    from transformers import LlamaConfig

    folder = tmp_path / "llama"
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=32).save_pretrained(folder)
    code, out, err = invoke(capsys, ask(image_file, "--model", folder))
    assert_user_error((code, out, err), "'llama'", "llava, llava_next")
    assert len(err) < 400  # vcontrast's list, not transformers' ~100 config classes


def test_relative_missing_model_path_fails_at_once(capsys, image_file, tmp_path, monkeypatch, no_loading):
    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(loading, "_hub_reachable", no_network)
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke(capsys, ask(image_file, "--model", "./models/typo")), "'./models/typo'", "does not exist")
    (tmp_path / "models").mkdir()  # `models/typo` beside an existing `models/` is a path, not a hub name
    assert_user_error(invoke(capsys, ask(image_file, "--model", "models/typo")), "'models/typo'", "does not exist")


def test_info_on_a_missing_or_empty_model_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda: False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for name, needle in [
        ("nodir/sub", "is not a local folder"),  # `org/name` with no `org` folder: a hub name
        ("nope_model", "is not a local folder"),
        ("empty", "has no config.json"),
        (tmp_path / "missing", "does not exist"),
    ]:
        assert_user_error(invoke(capsys, ["info", "--model", name]), repr(str(name)), needle)


def test_custom_code_models_are_refused(capsys, image_file, model_folder):
    # A config with auto_map and a model_type transformers lacks: transformers would prompt to run the folder's code.
    config = json.loads((model_folder / "config.json").read_text())
    config.update(model_type="my_vlm", auto_map={"AutoConfig": "configuration_my.MyConfig"})
    (model_folder / "config.json").write_text(json.dumps(config))
    needle = "custom-code models (auto_map) are not supported"
    assert_user_error(invoke(capsys, ask(image_file, "--model", model_folder)), needle, repr(str(model_folder)))
    assert_user_error(invoke(capsys, ["info", "--model", model_folder]), needle)


def test_hub_names_offline_or_unreachable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="'org/model' is not a local folder .* hub is offline"):
        loading.check_model_source("org/model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(loading, "_hub_cached", lambda name: False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda: False)
    with pytest.raises(ValueError, match="'org/model' is not a local folder, and the Hugging Face hub cannot be"):
        loading.check_model_source("org/model")
    monkeypatch.setattr(loading, "_hub_reachable", lambda: True)
    assert loading.check_model_source("org/model") == "org/model"  # hub names keep working online


@pytest.mark.parametrize(
    ("grounding", "needle"), [("where", "'where' must be TASK:STEPS"), ("wher:10", "('wher', 10) must be (task")]
)
def test_toy_train_bad_grounding_phase_fails_before_training(capsys, tmp_path, grounding, needle):
    out = tmp_path / "model"
    assert_user_error(invoke(capsys, ["toy", "train", "--out", out, "--grounding", grounding]), needle)
    assert not out.exists()


def test_complete_model_folder_loads(model_folder):
    model, processor = loading.load_model(model_folder)
    assert model.config.model_type == "llava" and not model.training
    assert processor.tokenizer is not None


def test_over_long_question_names_the_limit(capsys, image_file, monkeypatch):
    built = tm.build("llava")
    limit = built[0].config.text_config.max_position_embeddings
    monkeypatch.setattr(crg_cli, "load_model", lambda model=None, device=None, image_backend=None: built)
    question = " ".join(["red"] * (limit + 10))
    assert_user_error(invoke(capsys, ["ask", image_file, question, "--box", "2,2,12,10"]), f"limit of {limit}")


def test_unexpected_errors_show_the_traceback_and_say_bug(capsys, image_file, monkeypatch):
    def broken(model=None, device=None, image_backend=None):
        _a, _b = [1]  # an implicit ValueError: a bug, not a user error

    monkeypatch.setattr(crg_cli, "load_model", broken)
    code, _, err = invoke(capsys, ask(image_file))
    assert code == 1
    assert "Traceback" in err and "this is a bug in vcontrast" in err.splitlines()[-1]


def test_is_user_error():
    from vcontrast.crg.guidance import check_alpha

    def outside_vcontrast():
        raise ValueError("raised by a test, not by vcontrast")

    cases = ((lambda: check_alpha(-1), True), (lambda: int("x"), False), (outside_vcontrast, False))
    for error, expected in (*cases, (lambda: Path("/nope/x").read_text(), True)):
        try:
            error()
        except Exception as caught:  # noqa: BLE001
            assert is_user_error(caught) is expected, caught


def test_eval_user_errors_go_to_stderr_and_bugs_keep_their_traceback(capsys, tmp_path, monkeypatch):
    from vcontrast.bench import runner

    nowhere = tmp_path / "nowhere"
    code, out, err = invoke(capsys, ["eval", "--benchmark", "seetrue", "--data-dir", nowhere])
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines() == [
        f"error: seetrue: data folder {nowhere} does not exist.",
        "  expected layout: docs/eval.md, 'The benchmarks'",
    ]

    def broken(*args, **kwargs):
        _a, _b = [1]  # an implicit ValueError (like one raised inside torch): a bug, not "error: ..., exit 2"

    monkeypatch.setattr(runner, "evaluate", broken)
    code, out, err = invoke(capsys, ["eval", "--benchmark", "seetrue", "--data-dir", nowhere])
    assert code == 1 and "Traceback" in err and "this is a bug in vcontrast" in err.splitlines()[-1]
    from vcontrast.bench.cli import eval_command

    with pytest.raises(ValueError, match="not enough values to unpack"):  # the command itself lets it through
        eval_command(benchmark="seetrue", data_dir=nowhere)


def test_eval_metrics_errors_go_to_stderr(capsys, tmp_path, monkeypatch):
    from vcontrast.bench import runner

    summary = {"benchmark": "toy", "method": "base", "n_items": 2, "predictions": "predictions.jsonl"}
    results = [
        {**summary, "metrics": {}, "metrics_error": "AUROC needs both classes"},
        {**summary, "metrics": {"choice/accuracy": 1.0}, "metrics_error": "match/auroc is undefined: AUROC ..."},
    ]
    monkeypatch.setattr(runner, "evaluate", lambda *args, **kwargs: results.pop(0))
    args = ["eval", "--benchmark", "toy", "--data-dir", tmp_path, "--out", tmp_path / "out"]
    code, out, err = invoke(capsys, args)
    assert code == 1 and "(none)" in out and "error:" not in out
    assert err.strip() == "error: no metrics: AUROC needs both classes"
    code, out, err = invoke(capsys, args)  # some metrics defined: they are the result, the others are noted
    assert code == 0 and "choice/accuracy" in out and "undefined" not in out
    assert err.strip() == "note: left out: match/auroc is undefined: AUROC ..."


def test_lmms_eval_errors_go_to_stderr(capsys, monkeypatch):
    from vcontrast.bench import lmms
    from vcontrast.crg.guidance import check_alpha

    monkeypatch.setattr(lmms, "run_lmms_eval", lambda args: check_alpha(-1))  # one of vcontrast's own checks
    code, out, err = invoke(capsys, ["lmms-eval", "--model", "nope"])
    assert code == 2 and out == "" and err.startswith("error: ") and "alpha" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(lmms, "run_lmms_eval", lambda args: int("x"))
    code, out, err = invoke(capsys, ["lmms-eval", "--model", "nope"])
    assert code == 1 and "Traceback" in err and "this is a bug in vcontrast" in err


def test_cal_usage_errors_only_for_user_errors():
    import typer

    from vcontrast.cal.cli import _usage_errors
    from vcontrast.crg.guidance import check_alpha

    with pytest.raises(typer.BadParameter, match="alpha"), _usage_errors():
        check_alpha(-1)
    with pytest.raises(ValueError, match="invalid literal") as caught, _usage_errors():
        int("x")  # a ValueError that is no check of vcontrast's: a bug, with its traceback
    assert not isinstance(caught.value, typer.BadParameter)


# The cases as command lines, for the scripted run. IMAGE, BOMB and FOLDER are filled in.
SCRIPTED = [
    ask("IMAGE", "--alpha", "nan"),
    ask("IMAGE", "--alpha", "-1"),
    ask("IMAGE", "--save", "/nonexistent/x.png"),
    ask("IMAGE", "--save", "x.txt"),
    ask("IMAGE", "--device", "banana"),
    ask("BOMB"),
    ask("IMAGE", "--model", "BAD_CONFIG"),
    ask("IMAGE", "--model", "TRUNCATED"),
    ask("IMAGE", "--model", "NO_PROCESSOR"),
    ask("IMAGE", "--model", "TEXT_ONLY"),
    ask("IMAGE", "--model", "models/typo"),
    ["ask", "IMAGE", " ".join(["red"] * 300), "--box", "2,2,12,10"],
    ["score", "IMAGE", "what ?", "a", "b", "--box", "2,2,12,10", "--alpha", "nan"],
    ["rerank", "IMAGE", "a red cup", "--box", "1,2,3"],
    ["cal", "show", "IMAGE", "a red cup", "--out", "x.txt"],
    ["train", "--data", "missing.jsonl"],
    ["toy", "experiment", "nope"],
] + ([] if torch.cuda.is_available() else [ask("IMAGE", "--device", "cuda")])


@pytest.mark.slow
def test_scripted_run_of_all_cases(tmp_path, model_folder, bomb_file):
    """Each case as a real `vcontrast` process: exit 2, one line on stderr, no traceback, no file left behind."""
    image = tmp_path / "image.png"
    tm.image(0).save(image)
    folders = {}
    for name in ("BAD_CONFIG", "TRUNCATED", "NO_PROCESSOR", "TEXT_ONLY"):
        folders[name] = tmp_path / name.lower()
        subprocess.run(["cp", "-r", str(model_folder), str(folders[name])], check=True)
    (folders["BAD_CONFIG"] / "config.json").write_text("{")
    weights = folders["TRUNCATED"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (folders["NO_PROCESSOR"] / "processor_config.json").unlink()
    (folders["TEXT_ONLY"] / "config.json").write_text(json.dumps({"model_type": "llama"}))
    work = tmp_path / "work"
    work.mkdir()
    values = {"IMAGE": str(image), "BOMB": str(bomb_file), **{k: str(v) for k, v in folders.items()}}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the typo must fail without relying on offline mode
        env.pop(name, None)
    for args in SCRIPTED:
        args = [values.get(a, a) for a in args]
        result = subprocess.run(
            [sys.executable, "-m", "vcontrast.cli", *args],
            check=False,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, args
        assert len(result.stderr.strip().splitlines()) <= 2 and result.stderr.startswith("error: "), result.stderr
        assert list(work.iterdir()) == [], (args, list(work.iterdir()))
