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


@pytest.mark.parametrize("package", ["vcontrast", "vcontrast.cal", "vcontrast.crg"])
def test_lazy_export_tables_match_all(package):
    import importlib

    module = importlib.import_module(package)
    assert set(module.__all__) - {"__version__"} == set(module._EXPORTS)
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_cli_import_stays_light():
    """`vcontrast --help` must not pay for torch/transformers: commands import them when they run."""
    import subprocess
    import sys

    code = "import sys, vcontrast.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_toy_submodule_resolves_after_a_plain_import_and_stays_light():
    """`vcontrast.toy.load()` works after `import vcontrast` alone; neither the import nor `vcontrast.toy` pulls in
    torch/transformers (`load()` does, when called)."""
    import subprocess
    import sys

    code = (
        "import sys, vcontrast\n"
        "heavy = lambda: sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(heavy(), 'toy' in dir(vcontrast))\n"
        "print(callable(vcontrast.toy.load), vcontrast.toy is sys.modules['vcontrast.toy'], heavy())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[] True", "True True []"]
