"""Benchmark registry: names -> `"module:attr"` strings resolved on first use, plus the helpers loaders share.

Like `MODEL_MAPPING` in `lm_eval/models/__init__.py`: the registry is a plain dict, and a benchmark module is only
imported when its name is asked for. Each benchmark module defines one `Benchmark` (or several, as RefCOCO does)
saying how to load it, which splits exist and which metrics of `vcontrast.bench.metrics` score each task.

Examples:

```python
>>> from vcontrast.bench.registry import get_benchmark
>>> bench = get_benchmark("sugarcrepe")
>>> bench.splits[:2], bench.metrics
(('add_att', 'add_obj'), {'choice': ('accuracy',)})
>>> items = bench.load("/data/sugarcrepe", split="swap_att", limit=10)  # doctest: +SKIP
```
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vcontrast.bench.items import Item

logger = logging.getLogger(__name__)

BENCHMARKS: dict[str, str] = {
    "whatsup": "vcontrast.bench.whatsup:WHATSUP",
    "sugarcrepe": "vcontrast.bench.sugarcrepe:SUGARCREPE",
    "vipbench": "vcontrast.bench.vipbench:VIPBENCH",
    "seetrue": "vcontrast.bench.seetrue:SEETRUE",
    "refcoco": "vcontrast.bench.refcoco:REFCOCO",
    "refcoco+": "vcontrast.bench.refcoco:REFCOCO_PLUS",
    "refcocog": "vcontrast.bench.refcoco:REFCOCOG",
    "toy": "vcontrast.bench.toy:TOY",
}

_RESOLVED: dict[str, Benchmark] = {}


@dataclass(frozen=True)
class Benchmark:
    """What the runner needs to know about one benchmark.

    Args:
        name (`str`): registry name.
        loader (`Callable`): `load(data_dir, split=None, limit=None) -> list[Item]`.
        splits (`tuple[str, ...]`): the splits that exist; empty if any file name is a split (toy).
        metrics (`dict[str, tuple[str, ...]]`): task -> names in `vcontrast.bench.metrics.METRICS`. An empty tuple
            means the benchmark is scored elsewhere (ViP-Bench: GPT-4 grader).
        default_split (`str | None`, *optional*): the split `split=None` stands for; `None` means every split found.
        reference (`str`, *optional*): paper and repository the file format follows.
    """

    name: str
    loader: Callable[..., list[Item]]
    splits: tuple[str, ...]
    metrics: dict[str, tuple[str, ...]]
    default_split: str | None = None
    reference: str = ""

    @property
    def tasks(self) -> tuple[str, ...]:
        """The item tasks this benchmark produces."""
        return tuple(self.metrics)

    def load(self, data_dir: str | Path, split: str | None = None, limit: int | None = None) -> list[Item]:
        """Load items from the official layout under `data_dir` (see the benchmark module's docstring)."""
        return self.loader(data_dir, split=split, limit=limit)


def get_benchmark(name: str) -> Benchmark:
    """Resolve a benchmark by name, importing its module on first use.

    Args:
        name (`str`): a key of `BENCHMARKS` (case-insensitive).

    Raises:
        `ValueError`: unknown name; the message lists the known ones.
    """
    key = name.lower()
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(sorted(BENCHMARKS))}")
    if key not in _RESOLVED:
        module_name, attr = BENCHMARKS[key].split(":")
        _RESOLVED[key] = getattr(importlib.import_module(module_name), attr)
    return _RESOLVED[key]


def list_benchmarks() -> list[str]:
    """Sorted registry names."""
    return sorted(BENCHMARKS)


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the loaders (one place for the error messages users see)
# ---------------------------------------------------------------------------------------------------------------


def select_splits(split: str | None, splits: Sequence[str], benchmark: str) -> list[str]:
    """`[split]` after checking it exists, or every split when `split` is `None`."""
    if split is None:
        return list(splits)
    if split not in splits:
        raise ValueError(f"{benchmark}: unknown split {split!r}; splits are {', '.join(splits)}")
    return [split]


def check_limit(limit: int | None) -> None:
    """Reject a negative or non-integer `limit`."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"`limit` (={limit!r}) must be None or a non-negative integer")


def require_dir(data_dir: str | Path, benchmark: str, layout: str) -> Path:
    """`data_dir` as a `Path`, or a `ValueError` naming it and the expected layout."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise ValueError(f"{benchmark}: data folder {path} does not exist. Expected layout:\n{layout}")
    return path


def require_file(path: Path, benchmark: str, layout: str) -> Path:
    """`path` if it is a file, or a `ValueError` naming it and the expected layout."""
    if not path.is_file():
        raise ValueError(f"{benchmark}: missing file {path}. Expected layout:\n{layout}")
    return path


def find_image(candidates: Iterable[Path], benchmark: str, layout: str) -> Path:
    """The first existing path among `candidates`, or a `ValueError` listing where it looked."""
    candidates = list(candidates)
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise ValueError(f"{benchmark}: image not found (looked for {tried}). Expected layout:\n{layout}")


def read_jsonl_rows(path: Path, benchmark: str, required: tuple[str, ...], shape: str = ""):
    """Yield `(line number, row)` for each non-empty line of a JSONL file, with `ValueError`s that name the file and
    line: invalid JSON, or a row that is not an object holding the `required` keys (`shape` describes them)."""
    import json

    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{benchmark}: {path}:{lineno} is not valid JSON ({e})") from e
            if not (isinstance(row, dict) and set(required) <= set(row)):
                raise ValueError(f"{benchmark}: {path}:{lineno} needs keys {shape or ', '.join(required)}")
            yield lineno, row


def read_json(path: Path, benchmark: str, expect: type | None = None, shape: str = "") -> object:
    """`json.load` with `ValueError`s that name the file: invalid JSON, or a top level that is not `expect`.

    Args:
        path (`Path`): the JSON file.
        benchmark (`str`): name used in the messages.
        expect (`type`, *optional*): `list` or `dict`, the required top-level type.
        shape (`str`, *optional*): how the expected content looks, for the message.
    """
    import json

    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{benchmark}: {path} is not valid JSON ({e})") from e
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{benchmark}: {path} must hold {shape or expect.__name__}, got {type(data).__name__}")
    return data
