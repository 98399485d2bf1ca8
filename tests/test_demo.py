"""The demo end to end on a small random toy model saved to disk (the shipped model is tested in tests/toy)."""

import json

import pytest
import torch

from vcontrast.cli import main
from vcontrast.demo import run_demo, swapped_caption
from vcontrast.toy.grammar import caption, words
from vcontrast.toy.scenes import COLORS, make_scene


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    from vcontrast.toy.model import build_model
    from vcontrast.toy.train import toy_processor

    torch.manual_seed(0)
    processor = toy_processor()
    model = build_model(processor, hidden_size=32, num_layers=1, vision_hidden_size=32, vision_layers=1)
    folder = tmp_path_factory.mktemp("toy")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_demo_writes_pictures_heatmaps_and_table(toy_folder, tmp_path):
    lines = []
    summary = run_demo(tmp_path, n_scenes=2, n_items=4, model_path=toy_folder, echo=lines.append)
    for name in ("crg_0.png", "crg_1.png", "cal_clean.png", "cal_swapped.html", "results.md", "demo.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0] == "| task | metric | plain | CRG | CRG - plain [95% CI] |"
    assert [row.split(" | ")[0][2:] for row in table[2:7]] == ["spatial", "swap", "match", "region_vqa", "refexp"]
    assert all(row.count("[") == 1 for row in table[2:7])  # every difference has its interval
    assert "choice/accuracy" in summary["results"]["base/spatial"]
    assert "refexp/acc@0.5" in summary["results"]["crg/refexp"]
    assert len(summary["crg_examples"]) == 2 and all(r["crg"] is not None for r in summary["crg_examples"])
    tokens = summary["cal_heatmap"]["clean"]["tokens"]
    assert tokens[-1] == "." and len(tokens) == len(summary["cal_heatmap"]["clean"]["weight"])
    assert all(1.0 <= w <= 5.0 for w in summary["cal_heatmap"]["clean"]["weight"])  # clamped and pooled
    swapped = summary["cal_heatmap"]["swapped"]
    assert len(swapped["contradicted"]) == 2 and all(c["token"] in COLORS for c in swapped["contradicted"])
    assert {c["delta"] for c in swapped["contradicted"]} <= set(swapped["delta"])
    assert any("the swapped colour words" in line for line in lines)
    assert json.loads((tmp_path / "demo.json").read_text())["crg_examples"][0]["question"]
    assert not any("\x1b[" in line for line in lines)  # no colour codes unless asked (the CLI asks on a terminal)
    assert not [p for p in tmp_path.rglob(".*")]  # atomic writes leave no temp files
    coloured = []
    cal_heatmap_lines(toy_folder, tmp_path / "colour", coloured)
    assert any("\x1b[48;2;" in line for line in coloured)


def cal_heatmap_lines(folder, out, lines):
    from vcontrast.demo import cal_heatmap
    from vcontrast.models.loading import load_model

    out.mkdir()
    cal_heatmap(*load_model(folder), out, lines.append, color=True)


def test_demo_command_runs(toy_folder, tmp_path, capsys, monkeypatch):
    import vcontrast.demo

    calls = {}
    monkeypatch.setattr(vcontrast.demo, "run_demo", lambda out, **kw: calls.update(out=out, **kw))
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path), "--n-scenes", "3"])
    assert exc.value.code == 0 and calls["out"] == tmp_path and calls["n_scenes"] == 3
    assert calls["color"] is False  # captured output is not a terminal


def test_swapped_caption_swaps_two_colour_words():
    _, scene = make_scene(7, n_objects=2)
    text, wrong = swapped_caption(scene)
    before, after = words(caption(scene)), words(text)
    assert len(wrong) == 2 and [after[k] for k in wrong] == [before[k] for k in reversed(wrong)]
    assert all(before[k] in COLORS for k in wrong) and len(before) == len(after)
    _, same = make_scene(0, n_objects=1)
    with pytest.raises(ValueError, match="two objects"):
        swapped_caption(same)


@pytest.mark.parametrize(("option", "value"), [("--n-items", "0"), ("--n-items", "-3"), ("--n-scenes", "-1")])
def test_bad_counts_fail_before_the_model_loads(tmp_path, capsys, monkeypatch, option, value):
    import vcontrast.models.loading
    from vcontrast.cli import run

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(vcontrast.models.loading, "load_model", no_load)
    assert run(["demo", "--out", str(tmp_path / "out"), option, value]) == 2
    assert f"`{option[2:].replace('-', '_')}` (={value})" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written


def test_swapped_colour_words_map_to_subword_tokens(tmp_path):
    # A real tokenizer splits "orange" into pieces: the contradicted tokens are found by characters, not word index.
    from tests import tiny_models as tm
    from vcontrast.demo import cal_heatmap

    torch.manual_seed(0)
    model, processor = tm.build("llava")
    swapped = cal_heatmap(model.eval(), processor, tmp_path, lambda line: None)["swapped"]
    text, wrong = swapped_caption(make_scene(7, n_objects=2)[1])
    assert "".join(c["token"] for c in swapped["contradicted"]) == "".join(words(text)[k] for k in wrong)
    assert len(swapped["contradicted"]) > len(wrong)  # subwords: the test exercises the mapping


def test_word_tokens():
    from vcontrast.demo import word_tokens

    text = "a  red cup ."
    assert word_tokens(["a", "r", "ed", "", "cup", "."], text, [(3, 6), (7, 10)]) == [[1, 2], [4]]
    assert word_tokens(["ASSISTANT:a", "red"], text[:6], [(3, 6)]) == [[1]]  # a piece merged with the prefix
    with pytest.raises(ValueError, match="do not spell"):
        word_tokens(["a", "blue"], "a red", [(2, 5)])
