"""What a run was computed from: fingerprints of the data files a loader read and of the model.

The eval runner stores them in `run.json` and refuses to resume into a folder whose predictions came from other
inputs. Loaders report the files they read through `note_read` (the shared readers of `vcontrast.bench.registry`
and `vcontrast.bench.items` do it), and the runner collects them with `record_reads`.

Examples:

```python
>>> from vcontrast.bench.fingerprint import record_reads, fingerprint_files
>>> with record_reads() as paths:  # doctest: +SKIP
...     items = get_benchmark("seetrue").load("data/SeeTRUE")
>>> fingerprint_files(paths)  # doctest: +SKIP
{'/data/SeeTRUE/SeeTRUE.csv': {'size': 3120455, 'sha256': '9c1e...'}}
```
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

_READS: ContextVar[list[Path] | None] = ContextVar("vcontrast_bench_reads", default=None)
_CHUNK = 1 << 20
# Model files whose content is hashed (small); weight files are identified by name and size (hashing GBs is slow).
_MODEL_TEXT_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json")
_MODEL_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@contextmanager
def record_reads() -> Iterator[list[Path]]:
    """Collect the paths `note_read` reports inside the block (resolved, in first-read order, without repeats)."""
    paths: list[Path] = []
    token = _READS.set(paths)
    try:
        yield paths
    finally:
        _READS.reset(token)


def note_read(path: str | Path) -> None:
    """Report that a loader read `path` (a no-op outside `record_reads`)."""
    paths = _READS.get()
    if paths is not None:
        resolved = Path(path).expanduser().resolve()
        if resolved not in paths:
            paths.append(resolved)


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """`{"size": bytes, "sha256": hex digest}` of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return {"size": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def fingerprint_files(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """`path -> file_fingerprint(path)` for every path, sorted by path."""
    return {str(p): file_fingerprint(p) for p in sorted(map(str, paths))}


def model_identity(model: Any) -> dict[str, Any]:
    """What identifies a model for resuming: its name or resolved folder and fingerprints of its files.

    Args:
        model (`str`, `Path`, `tuple` or `None`): what `evaluate` takes: `None` for the toy model, a checkpoint folder
            (or hub id), or a loaded `(model, processor)` pair.

    Returns:
        `dict`: `{"name": ...}` plus, for a local folder, `files`: the content hash of its small files (config,
        processor, tokenizer) and the size of each weight file.
    """
    if model is None:
        from vcontrast.toy.model import WEIGHTS_DIR

        return {"name": "toy", "files": _folder_files(WEIGHTS_DIR)}
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
        if path.is_dir():
            return {"name": str(path.resolve()), "files": _folder_files(path)}
        return {"name": str(model)}
    if isinstance(model, tuple) and len(model) == 2:
        from vcontrast.models.identity import model_fingerprint

        config = getattr(model[0], "config", None)
        name = getattr(config, "_name_or_path", "") or type(model[0]).__name__
        return {"name": name, **model_fingerprint(model[0])}
    raise ValueError(f"`model` (={model!r}) has to be None (the toy model), a path, or a (model, processor) pair")


def _folder_files(folder: Path) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.name in _MODEL_TEXT_FILES:
            files[path.name] = file_fingerprint(path)
        elif path.suffix in _MODEL_WEIGHT_SUFFIXES:
            files[path.name] = {"size": path.stat().st_size}
    return files
