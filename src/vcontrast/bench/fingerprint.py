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
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_READS: ContextVar[list[Path] | None] = ContextVar("vcontrast_bench_reads", default=None)
_CHUNK = 1 << 20
# A model folder's small files are hashed by suffix: config, generation and processor settings (transformers 5 keeps
# the image processor's in processor_config.json), chat templates, tokenizers and their vocabularies, and the code of
# remote-code models all change what the model predicts. Weight files are identified by name and size (hashing GBs
# is slow); other files (README.md, LICENSE, .gitattributes) are left out.
_MODEL_TEXT_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".py", ".tiktoken", ".vocab", ".spm", ".bpe")
_MODEL_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# The only files vcontrast hashed until 2026-12 (weights were recorded as today); see `backfill_model_files`.
_LEGACY_MODEL_TEXT_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json")


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
        `dict`: `{"name": ...}` plus, for a local folder, `files`: the size and content hash of each small file
        (`.json`, `.jinja`, `.model`, `.txt`, `.py`, `.tiktoken`, ...: config, chat template, processor, tokenizer
        and vocabulary, remote code) and the size of each weight file.
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
        if not path.is_file():
            continue
        if path.suffix in _MODEL_WEIGHT_SUFFIXES:
            files[path.name] = {"size": path.stat().st_size}
        elif path.suffix in _MODEL_TEXT_SUFFIXES:
            files[path.name] = file_fingerprint(path)
    return files


def _hashed_by_older_vcontrast(name: str) -> bool:
    return name in _LEGACY_MODEL_TEXT_FILES or Path(name).suffix in _MODEL_WEIGHT_SUFFIXES


def backfill_model_files(record: Mapping, current: Mapping, path: Path, taken_as: str) -> dict:
    """`record` (the `model` entry of a run.json read from `path`) with `current`'s `files` when it was written by an
    older vcontrast, which hashed only config.json, generation_config.json, preprocessor_config.json and
    tokenizer.json (and recorded weight sizes as today): when every file it recorded matches and the files it lacks
    are all ones it did not hash, the record still resumes; a warning names those files, `taken_as` (e.g.
    "resuming it with") naming what the record is taken for. Anything else is returned unchanged, so the runner
    names the difference."""
    if not isinstance(record, Mapping) or not isinstance(current, Mapping):
        return record
    old, now = record.get("files"), current.get("files")
    if not isinstance(old, Mapping) or not isinstance(now, Mapping) or old == now:
        return dict(record)
    if {k: v for k, v in record.items() if k != "files"} != {k: v for k, v in current.items() if k != "files"}:
        return dict(record)
    added = [name for name in now if name not in old]
    if any(name not in now or now[name] != entry for name, entry in old.items()):
        return dict(record)
    if not added or any(_hashed_by_older_vcontrast(name) for name in added):
        return dict(record)
    logger.warning(
        "%s was written by an older vcontrast that did not fingerprint the model's %s; the files it did record "
        "match, so %s today's fingerprint (a change to those files before this rerun would go unnoticed)",
        path,
        ", ".join(added),
        taken_as,
    )
    return {**record, "files": dict(now)}
