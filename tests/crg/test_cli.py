"""The CRG commands (`ask`, `score`, `rerank`) on a tiny model, through the main CLI and its error policy."""

from types import SimpleNamespace

import pytest
from PIL import Image

from tests import tiny_models as tm
from vcontrast.cli import run
from vcontrast.crg import cli


@pytest.fixture
def app(monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_model", lambda model=None, device=None, image_backend=None: tm.build("llava"))

    def invoke(args):
        code = run(args)
        captured = capsys.readouterr()
        return SimpleNamespace(exit_code=code, output=captured.out + captured.err)

    return invoke


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "image.png"
    tm.image(0).save(path)
    return path


def test_help(app):
    for command in ("ask", "score", "rerank"):
        result = app([command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--box" in result.output and "--model" in result.output


def test_ask_prints_both_answers_and_saves_picture(app, image_file, tmp_path):
    out = tmp_path / "out.png"
    args = ["ask", str(image_file), "what is in the box ?", "--box", "2,2,12,10", "--max-new-tokens", "3"]
    result = app([*args, "--save", str(out)])
    assert result.exit_code == 0, result.output
    assert "without CRG:" in result.output and "with CRG (alpha=1):" in result.output
    picture = Image.open(out)
    scale = -(-256 // tm.image(0).width)  # viz.side_by_side up-scales small images to >= 256 px panels
    assert picture.width == 2 * tm.image(0).width * scale + 24 and picture.height > tm.image(0).height * scale


def test_score_and_rerank(app, image_file):
    result = app(["score", str(image_file), "what is in the box ?", "a red cup", "blue", "--box", "2,2,12,10"])
    assert result.exit_code == 0, result.output
    assert "a red cup" in result.output and "CRG" in result.output
    result = app(["rerank", str(image_file), "a red cup", "--box", "2,2,12,10", "--box", "14,4,24,16"])
    assert result.exit_code == 0, result.output
    assert result.output.count("<- best") == 1
    # Re-ranking's log-ratio has no alpha: the option is not offered (it would change nothing).
    result = app(["rerank", str(image_file), "a red cup", "--box", "2,2,12,10", "--alpha", "2"])
    assert result.exit_code == 2 and "--alpha" in result.output


def test_bad_input_is_a_usage_error(app, image_file, tmp_path):
    for args in (
        ["ask", str(image_file), "what ?", "--box", "1,2,3"],  # three numbers
        ["ask", str(image_file), "what ?", "--box", "40,40,50,50"],  # outside the 24 x 20 image
        ["ask", str(image_file), "what ?"],  # no regions
        ["ask", str(tmp_path / "missing.png"), "what ?", "--box", "1,1,4,4"],
    ):
        result = app(args)
        assert result.exit_code == 2, (args, result.output)


def test_parse_box_and_default_model(monkeypatch):
    assert cli.parse_box(" 1, 2.5,3,4 ") == (1.0, 2.5, 3.0, 4.0)
    with pytest.raises(ValueError, match="'a,b,c,d'"):
        cli.parse_box("a,b,c,d")
    import vcontrast.toy

    monkeypatch.setattr(vcontrast.toy, "load", lambda **kwargs: ("toy", kwargs), raising=False)
    assert cli.load_model(None) == ("toy", {})
    assert cli.load_model(None, device="cpu")[1]["device"].type == "cpu"


def test_normalized_boxes_option(app, image_file):
    """Boxes in [0, 1] need --normalized-boxes (without it they are refused before the model loads); with it they
    give the same scores as the same boxes in pixels (the 24 x 20 image: 0.25 * 24 = 6, 0.5 * 20 = 10)."""
    args = ["score", str(image_file), "what is in the box ?", "a red cup", "blue"]
    result = app([*args, "--box", "0.25,0,0.5,0.5"])
    assert result.exit_code == 2 and "--normalized-boxes" in result.output, result.output
    normalized = app([*args, "--box", "0.25,0,0.5,0.5", "--normalized-boxes"])
    pixels = app([*args, "--box", "6,0,12,10"])
    assert normalized.exit_code == 0 and normalized.output == pixels.output, normalized.output
    result = app(["rerank", str(image_file), "a red cup", "--box", "0,0,0.5,0.5", "--box", "0.5,0.5,1,1"])
    assert result.exit_code == 2, result.output
    result = app(
        ["rerank", str(image_file), "a red cup", "--box", "0,0,0.5,0.5", "--box", "0.5,0.5,1,1", "--normalized-boxes"]
    )
    assert result.exit_code == 0 and result.output.count("<- best") == 1, result.output
    result = app(
        ["ask", str(image_file), "what ?", "--box", "0,0,0.5,0.5", "--normalized-boxes", "--max-new-tokens", "2"]
    )
    assert result.exit_code == 0 and "with CRG" in result.output, result.output
