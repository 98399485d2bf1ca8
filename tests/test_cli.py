"""The command line: help exits cleanly and `info` lists the supported families."""

import pytest

from vcontrast.cli import main


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_info_lists_supported_families(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for family in ("llava", "llava_next", "qwen2_vl", "idefics3", "paligemma"):
        assert family in out
