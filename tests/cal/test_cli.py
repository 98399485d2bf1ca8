"""The CAL commands (`cal precompute`, `cal show`, `cal audit`) through typer on a tiny toy VLM: outputs, resuming
after an interrupted run, and clear errors."""

import json

import pytest
import torch
from PIL import Image

from tests.cal.conversations import run, save_toy_model, write_data
from vcontrast.cal import load_weights


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_toy_model(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path)


def test_help_lists_the_commands():
    out = run("cal", "--help").stdout
    for command in ("precompute", "show", "audit"):
        assert command in out
    assert "--method" in run("train", "--help").stdout


def test_show_help_keeps_the_clamp_interval():
    # rich reads "[alpha, beta]" as a markup tag and drops it unless escaped
    out = " ".join(run("cal", "show", "--help").stdout.split())
    assert "the gain clamped to [alpha, beta], pooled" in out


def test_train_refuses_precomputed_weights_for_the_plain_format(tmp_path, data, monkeypatch):
    # `cal precompute` writes weights of the chat-template format; stage pt trains on the plain format, whose tokens
    # differ: refused up front, naming both options, before any model loads.
    import vcontrast.models.loading

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(vcontrast.models.loading, "load_model", no_load)
    weights = tmp_path / "w.cal.jsonl"
    weights.write_text("")
    args = ("train", "--data", data, "--stage", "pt", "--cal-weights", weights, "--output-dir", tmp_path / "run")
    output = run(*args, code=2).output
    assert "`--cal-weights` with `--stage pt`" in output and "plain format" in output

    from transformers import TrainingArguments

    from vcontrast.cal.finetune import finetune

    training_args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, report_to="none")
    with pytest.raises(ValueError, match="`cal_weights` with stage 'pt'"):
        finetune(data, training_args, stage="pt", cal_weights=weights)


def test_show_prints_every_token_and_writes_png_and_html(tmp_path, model_dir):
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (220, 30, 30)).save(image)
    png, page = tmp_path / "out" / "show.png", tmp_path / "show.html"
    text = "a red circle on the left"
    args = ("cal", "show", image, text, "--model", model_dir, "--out", png, "--html", page)
    out = run(*args, "--no-color").stdout
    rows = out.splitlines()[1:7]
    assert [row.split()[0] for row in rows] == text.split()
    for row in rows:
        delta, weight = map(float, row.split()[1:3])
        assert 1.0 <= weight <= 5.0 and abs(delta) < 100
    assert "\x1b[" not in out
    assert Image.open(png).size[0] > 64
    assert page.read_text().count('class="token"') == 6 and "class='legend'" in page.read_text()
    assert "\x1b[48;2;" in run(*args, "--color").stdout


def test_show_bad_input(tmp_path, model_dir):
    result = run("cal", "show", tmp_path / "nope.png", "red", "--model", model_dir, code=2)
    assert "nope.png" in result.output
    Image.new("RGB", (64, 64)).save(tmp_path / "black.png")
    result = run("cal", "show", tmp_path / "black.png", "red", "--model", model_dir, "--contrast", "blur:10", code=2)
    assert "GaussianBlur" in result.output
    result = run("cal", "show", tmp_path / "black.png", "red", "--alpha", "0.5", "--beta", "0.5", code=2)
    assert "`beta` (=0.5)" in result.output


def test_precompute_resumes_to_the_uninterrupted_result(data, model_dir):
    full = data.with_name("full.cal.jsonl")
    out = run("cal", "precompute", data, "--model", model_dir, "--out", full, "--batch-size", "2").stdout
    assert "CAL weights for 5 samples" in out and "mean delta" in out
    # Interrupted after 2 samples (--limit), then run again: stored beside the data by default.
    out = run("cal", "precompute", data, "--model", model_dir, "--limit", "2", "--no-progress").stdout
    assert "stopped after 2 of 5 samples" in out
    default = data.with_name("data.cal.jsonl")
    assert len(default.read_text().splitlines()) == 1 + 2  # the provenance record, then 2 samples
    run("cal", "precompute", data, "--model", model_dir, "--batch-size", "2")
    resumed, expected = load_weights(default), load_weights(full)
    assert sorted(resumed) == sorted(expected) == ["a", "b", "c", "d", "e"]
    for sid, stored in expected.items():
        assert torch.equal(resumed[sid]["tokens"], stored["tokens"])
        torch.testing.assert_close(resumed[sid]["delta"], stored["delta"], atol=1e-5, rtol=0)
        torch.testing.assert_close(resumed[sid]["weights"], stored["weights"], atol=1e-5, rtol=0)
    assert torch.equal(expected["d"]["delta"], torch.zeros_like(expected["d"]["delta"]))  # text only: no gain
    # the provenance names the image backend of the collator's processor; a pinned one is the one recorded
    assert json.loads(full.read_text().splitlines()[0])["vcontrast_cal"]["image_backend"] in ("pil", "torchvision")
    pinned = data.with_name("pil.cal.jsonl")
    run("cal", "precompute", data, "--model", model_dir, "--out", pinned, "--image-backend", "pil", "--limit", "1")
    assert json.loads(pinned.read_text().splitlines()[0])["vcontrast_cal"]["image_backend"] == "pil"


def test_audit_resumes_and_sorts_most_suspicious_first(data, model_dir):
    full = data.with_name("full.audit.jsonl")
    out = run("cal", "audit", data, "--model", model_dir, "--out", full, "--top", "3").stdout
    assert "audited 5 samples" in out and "contradicted tokens (delta < 0)" in out
    assert len(out.split("contradicted tokens (delta < 0)")[1].strip().splitlines()) == 3
    assert "stopped after 2 of 5" in run("cal", "audit", data, "--model", model_dir, "--limit", "2").stdout
    run("cal", "audit", data, "--model", model_dir)
    resumed = [json.loads(line) for line in data.with_name("data.audit.jsonl").read_text().splitlines()[1:]]
    expected = [json.loads(line) for line in full.read_text().splitlines()[1:]]
    assert {r["id"] for r in resumed} == {r["id"] for r in expected} == set("abcde")
    by_id = {r["id"]: r for r in expected}
    for record in resumed:
        for key in ("mean_delta", "frac_negative", "min_delta"):
            assert record[key] == pytest.approx(by_id[record["id"]][key], abs=1e-5)
    keys = [(-r["frac_negative"], r["mean_delta"]) for r in resumed]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--contrast", "fog:3"), "fog"),
        (("--limit", "0"), "(=0)"),
        (("--window", "2"), "`window` (=2)"),
        (("--image-backend", "opencv"), "image backend 'opencv' is not one of 'pil', 'torchvision'"),
    ],
)
def test_precompute_bad_input(data, model_dir, args, message):
    assert message in run("cal", "precompute", data, "--model", model_dir, *args, code=2).output


def test_audit_missing_image_and_data(data, model_dir):
    (data.parent / "images" / "blue.png").unlink()
    assert "blue.png' not found" in run("cal", "audit", data, "--model", model_dir, code=2).output
    assert "no data file" in run("cal", "audit", data.with_name("nope.jsonl"), "--model", model_dir, code=2).output


def test_show_on_the_toy_demos_swapped_caption_draws_contradicted_tokens_blue(tmp_path):
    # The demo's swapped caption (another scene's caption under scene 7's image), with the shipped toy model.
    import re

    from vcontrast.cal.show import delta_colour
    from vcontrast.toy.grammar import caption
    from vcontrast.toy.scenes import make_scene

    image, _ = make_scene(7, n_objects=2)
    _, other = make_scene(8, n_objects=2)
    image.save(tmp_path / "scene.png")
    png, page = tmp_path / "show.png", tmp_path / "show.html"
    args = ("cal", "show", tmp_path / "scene.png", caption(other), "--prompt", "describe the image .")
    out = run(*args, "--out", png, "--html", page, "--no-color").stdout
    rows = [line.split() for line in out.splitlines()[1:] if len(line.split()) == 3]
    deltas = {tok: float(delta) for tok, delta, _ in rows}
    weights = [float(weight) for _, _, weight in rows]
    negative = [tok for tok, delta in deltas.items() if delta < 0]
    assert negative, f"no token the image argues against in {deltas}"
    assert min(weights) >= 1.0  # the clamped weights alone could not show them

    cells = re.findall(
        r'<td class="(\w+)" title="delta ([-\d.]+), weight [-\d.]+" style="background:rgb\((\d+),(\d+),(\d+)\)"',
        page.read_text(),
    )
    by_row = {}
    for cls, delta, *rgb in cells:
        by_row.setdefault(cls, []).append((float(delta), tuple(map(int, rgb))))
    assert len(by_row["token"]) == len(by_row["weight"]) == len(rows)
    for delta, (r, _, b) in by_row["token"]:
        assert (b > r) == (delta < 0)  # blue exactly where the gain is negative
    assert all(r == 255 for _, (r, _, _) in by_row["weight"])  # weights: white to red, never blue

    # The PNG holds boxes in the colour of the most contradicted token's gain, and a legend's blue end.
    pixels = set(Image.open(png).convert("RGB").getdata())
    worst = min(by_row["token"])[1]
    assert worst in pixels and delta_colour(-5.0) in pixels
