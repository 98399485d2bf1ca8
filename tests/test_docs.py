"""Runnable docs: every ```bash and ```python block of README.md and docs/**/*.md runs here, as written.

The blocks of one page run in order in one folder holding a copy of `examples/`, Python blocks in one namespace
(a later block uses what an earlier one defined), `vcontrast ...` commands through the command line's `run` (the
shipped toy model is the default `--model`). A block that cannot run here says why in a comment right above it:

    <!-- docs-test: skip (needs a 7B checkpoint and a GPU) -->   never run; the reason is required
    <!-- docs-test: slow -->                                      run with `pytest -m slow` only

Commands other than `vcontrast` (pip, make, accelerate, cp) must be in a skipped block.
"""

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARK = re.compile(r"<!-- docs-test: (skip|slow)(?: \(([^)]+)\))? -->\s*\Z")
RUNNABLE = ("bash", "python")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    mark: str | None  # "skip", "slow" or None
    reason: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(page, line, match.group(1), match.group(2), *(mark.groups() if mark else (None, None))))
    return found


def commands(code: str) -> list[list[str]]:
    """The command lines of a bash block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", code)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def run_block(block: Block, namespace: dict) -> None:
    if block.lang == "python":
        exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 (the documentation's own code)
        return
    from vcontrast.cli import run

    for argv in commands(block.code):
        assert argv[0] == "vcontrast", f"{block.where}: {argv[0]!r} cannot run here; mark the block skip (reason)"
        code = run(argv[1:])
        assert code == 0, f"{block.where}: `{shlex.join(argv)}` exited {code}"


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_page_has_runnable_blocks_and_skips_say_why():
    runnable = [b for page in PAGES for b in blocks(page) if b.lang in RUNNABLE]
    assert len(runnable) > 20
    for block in runnable:
        assert block.mark != "skip" or block.reason, f"{block.where}: a skipped block needs a reason"
    for block in (b for page in PAGES for b in blocks(page)):
        assert block.lang, f"{block.where}: name the block's language (bash, python, text, json)"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_page(page: Path, include_slow: bool) -> int:
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in blocks(page):
        if block.lang not in RUNNABLE or block.mark == "skip" or (block.mark == "slow" and not include_slow):
            continue
        run_block(block, namespace)
        ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_page_runs(page, workdir):
    """The page's fast blocks run as written."""
    _run_page(page, include_slow=False)


SLOW_PAGES = [page for page in PAGES if any(b.mark == "slow" for b in blocks(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES, ids=page_id)
def test_page_runs_with_slow_blocks(page, workdir):
    """Every block of the page that is not skipped runs as written, the slow ones included."""
    assert _run_page(page, include_slow=True) > 0
