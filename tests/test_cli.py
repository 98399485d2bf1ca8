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


def test_package_exports_resolve():
    import vcontrast

    for name in vcontrast.__all__:
        assert getattr(vcontrast, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vcontrast.nope  # noqa: B018


def test_lazy_export_table_matches_all():
    import vcontrast

    assert set(vcontrast.__all__) - {"__version__"} == set(vcontrast._EXPORTS)
