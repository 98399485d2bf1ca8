"""Output files: checked before the work starts, written whole or not at all (a temp file, then a rename).

A run that fails or is killed while writing leaves the previous file (or none), never a half-written or 0-byte one,
and no temp file after an exception. Every writer in vcontrast's CLI, demo and pictures goes through here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SUFFIXES", "atomic_path", "check_output_file", "no_debris", "save_image", "write_text"]

# File name endings PIL saves from an RGB image (the format follows the suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def check_output_file(
    path: str | os.PathLike[str], option: str = "output", suffixes: Sequence[str] = (), create_folder: bool = False
) -> Path:
    """Check that `path` can be written (before any slow work): its folder exists and its suffix fits.

    Args:
        path (`str` or `os.PathLike`): the file to be written.
        option (`str`, *optional*, defaults to `"output"`): how the user named it (e.g. `"--save"`), for messages.
        suffixes (`Sequence[str]`, *optional*): allowed file name endings (lower case, with the dot); empty allows any.
        create_folder (`bool`, *optional*, defaults to `False`): the folder may be missing (it is created when the
            file is written) as long as no file stands in its way.

    Returns:
        `Path`: `path` as a `Path`.

    Raises:
        `ValueError`: naming the path and the fix, if it is a folder, has another suffix or its folder is missing.

    Examples:

    ```python
    >>> check_output_file("out.png", "--save", IMAGE_SUFFIXES)
    PosixPath('out.png')
    ```
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file name, such as {str(path / 'out')!r}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{option} {str(path)!r} has to end in one of {', '.join(suffixes)} (the file type follows the suffix)"
        )
    folder = path.parent
    while create_folder and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(
            f"the folder {str(folder)!r} of {option} {str(path)!r} does not exist; create it or choose another"
        )
    return path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp path beside `path` to write to; renamed onto `path` when the block ends without an exception.

    The temp file keeps `path`'s suffix (PIL and safetensors pick the format from it), has a short name (so any file
    name the system allows for `path` works) and is removed if the block raises. It is flushed to disk before the
    rename and the folder after it, so an OS crash leaves the old file or the new one, not an empty one. Missing
    parent folders of `path` are created.

    Examples:

    ```python
    >>> with atomic_path("out/table.md") as tmp:
    ...     tmp.write_text("| a | b |\\n")
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{secrets.token_hex(6)}{path.suffix}")  # 16 characters + the suffix
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # writers write by path (PIL, torch, safetensors): fsync what they left
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename durable; best effort: some systems (Windows) cannot open or fsync a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def no_debris(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create the missing folders of the file `path` for the block; if it raises, remove what it left empty.

    For outputs that grow while a run works (an appended JSONL that a rerun resumes): a failure before the first
    record leaves neither a 0-byte file nor an empty folder behind; a file with records stays, for the rerun.

    Examples:

    ```python
    >>> with no_debris("out/run/predictions.jsonl") as path, path.open("a") as f:
    ...     f.write(next_record())
    ```
    """
    path = Path(path)
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
        for folder in created:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_image(image: Any, path: str | os.PathLike[str]) -> Path:
    """Save a PIL image to `path` atomically, in the format of its suffix; returns `path`."""
    with atomic_path(path) as tmp:
        image.save(tmp)
    return Path(path)
