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
from typing import Any

from vcontrast.bench.fingerprint import note_read
from vcontrast.bench.items import Item, check_box

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
        options (`tuple[str, ...]`, *optional*): keyword options the loader takes besides `split` and `limit`
            (e.g. RefCOCO's `proposals`, `split_by`, `image_root`).
        official_per_split (`bool`, *optional*, defaults to `False`): the benchmark's official numbers are per split
            (What'sUp subsets, SeeTRUE sources, SugarCrepe categories): `compute_metrics` then reports each split,
            their unweighted mean as "mean/<metric>", and the figure over all items only as "pooled/<metric>".
    """

    name: str
    loader: Callable[..., list[Item]]
    splits: tuple[str, ...]
    metrics: dict[str, tuple[str, ...]]
    default_split: str | None = None
    reference: str = ""
    options: tuple[str, ...] = ()
    official_per_split: bool = False

    @property
    def tasks(self) -> tuple[str, ...]:
        """The item tasks this benchmark produces."""
        return tuple(self.metrics)

    def load(
        self, data_dir: str | Path, split: str | None = None, limit: int | None = None, **options: Any
    ) -> list[Item]:
        """Load items from the official layout under `data_dir` (see the benchmark module's docstring).

        `options` are the loader's own keyword options (`Benchmark.options`).
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = f"takes only {', '.join(self.options)}" if self.options else "takes none"
            names = ", ".join(unknown)
            raise ValueError(f"{self.name}: option(s) {names} do not apply to this benchmark (it {takes})")
        return self.loader(data_dir, split=split, limit=limit, **options)


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


def find_image(
    candidates: Iterable[Path],
    benchmark: str,
    layout: str,
    source: tuple[Path, str, str] | None = None,
) -> Path:
    """The first existing path among `candidates`, or a `ValueError` listing where it looked.

    Args:
        candidates (`Iterable[Path]`): where the image may be, in order.
        benchmark (`str`): name used in the message.
        layout (`str`): the expected layout, shown in the message.
        source (`tuple[Path, str, str]`, *optional*): `(file, row, field)` the image name comes from (see
            `row_error`), so that the message names the row that points to the missing image.
    """
    candidates = list(candidates)
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    if source is not None:
        file, row, field = source
        raise row_error(benchmark, file, row, field, f"names an image not found (looked for {tried})")
    raise ValueError(f"{benchmark}: image not found (looked for {tried}). Expected layout:\n{layout}")


def row_error(benchmark: str, path: Path, row: str, field: str | None, problem: str) -> ValueError:
    """The `ValueError` for a malformed row: names the file, the row as the file counts it and the field.

    Args:
        benchmark (`str`): name used in the message.
        path (`Path`): the file.
        row (`str`): where in the file, as the file counts it: "line 7" (JSONL, CSV), "entry 3" (JSON list),
            "key 'v1_0'" (JSON object), "annotations[12]".
        field (`str`, *optional*): the bad field; `None` when the whole row is wrong.
        problem (`str`): what is wrong and what is expected.

    Examples:

    ```python
    >>> str(row_error("whatsup", Path("coco_qa_one_obj.json"), "entry 3", "image_id", "(='x') must be an integer"))
    "whatsup: coco_qa_one_obj.json, entry 3: `image_id` (='x') must be an integer"
    ```
    """
    where = f"{benchmark}: {path}, {row}: "
    return ValueError(where + (f"`{field}` {problem}" if field else problem))


def require_text(value: Any, benchmark: str, path: Path, row: str, field: str) -> str:
    """`value` if it is a non-empty string, else a `row_error` naming the field."""
    if not isinstance(value, str) or not value.strip():
        raise row_error(benchmark, path, row, field, f"(={value!r}) must be a non-empty string")
    return value


def require_box(value: Any, benchmark: str, path: Path, row: str, field: str, fmt: str = "[x, y, w, h]") -> list:
    """`value` as a list of 4 finite floats, else a `row_error` naming the field and the format `fmt`: COCO's
    `"[x, y, w, h]"` (the default) or `"[x0, y0, x1, y1]"`. The box must also have a positive width and height (the
    rules of `vcontrast.regions`); an inverted `[x0, y0, x1, y1]` box gets a hint that it may be COCO's xywh."""
    import math

    ok = isinstance(value, (list, tuple)) and len(value) == 4
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise row_error(benchmark, path, row, field, f"(={value!r}) must be 4 numbers {fmt}")
    box = [float(v) for v in value]
    if fmt == "[x, y, w, h]":
        try:
            check_box([box[0], box[1], box[0] + box[2], box[1] + box[3]], "")
        except ValueError:
            raise row_error(
                benchmark, path, row, field, f"(={value!r}) must have a positive width and height {fmt}"
            ) from None
    else:
        try:
            check_box(value, f"`{field}`")
        except ValueError as e:
            raise row_error(benchmark, path, row, None, str(e)) from None
    return box


def read_jsonl_rows(path: Path, benchmark: str, required: tuple[str, ...], shape: str = ""):
    """Yield `(line number, row)` for each non-empty line of a JSONL file, with `ValueError`s that name the file and
    line: invalid JSON, or a row that is not an object holding the `required` keys (`shape` describes them)."""
    import json

    note_read(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{benchmark}: {path}, line {lineno}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise row_error(benchmark, path, f"line {lineno}", None, f"must be a JSON object with {shape}")
            missing = [k for k in required if k not in row]
            if missing:
                raise row_error(benchmark, path, f"line {lineno}", missing[0], f"is missing; a row needs {shape}")
            yield lineno, row


def read_csv_rows(path: Path, benchmark: str, required: tuple[str, ...], layout: str = ""):
    """Yield `(line number, row)` for each data row of a CSV file with a header (the line number is the file's, so
    the header is line 1); a `ValueError` names the file and the missing columns if the header lacks `required`."""
    import csv

    note_read(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            hint = f" Expected layout:\n{layout}" if layout else ""
            raise ValueError(f"{benchmark}: {path} lacks column(s) {missing}; found {columns}.{hint}")
        line = reader.line_num + 1
        for row in reader:
            yield line, row
            line = reader.line_num + 1


def read_json(path: Path, benchmark: str, expect: type | None = None, shape: str = "") -> object:
    """`json.load` with `ValueError`s that name the file: invalid JSON, or a top level that is not `expect`.

    Args:
        path (`Path`): the JSON file.
        benchmark (`str`): name used in the messages.
        expect (`type`, *optional*): `list` or `dict`, the required top-level type.
        shape (`str`, *optional*): how the expected content looks, for the message.
    """
    import json

    note_read(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{benchmark}: {path} is not valid JSON ({e})") from e
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{benchmark}: {path} must hold {shape or expect.__name__}, got {type(data).__name__}")
    return data
