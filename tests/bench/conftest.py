"""Fixtures for the benchmark loader tests: tiny generated images written into official layouts."""

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def make_image():
    """Write a small RGB PNG/JPEG at `path` (parents created) and return the path."""

    def _make(path: Path, size: tuple[int, int] = (16, 12), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path)
        return path

    return _make
