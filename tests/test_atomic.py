"""Atomic writes: a failed write leaves the old file (or none) and no temp file; paths are checked up front."""

import pytest
from PIL import Image

from vcontrast.atomic import IMAGE_SUFFIXES, atomic_path, check_output_file, save_image, write_text


def test_write_replaces_whole_file(tmp_path):
    path = write_text(tmp_path / "sub" / "table.md", "new\n")  # missing folders are created
    assert path.read_text() == "new\n"
    save_image(Image.new("RGB", (4, 4), "red"), tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").getpixel((0, 0)) == (255, 0, 0)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "table.md", "x.png"]


def test_failure_leaves_old_file_and_no_debris(tmp_path):
    path = tmp_path / "table.md"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]
    with pytest.raises(ValueError, match="unknown file extension"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "x.notanimage")
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_long_file_name(tmp_path):
    path = tmp_path / ("x" * 247 + ".md")  # 250 bytes: a valid name (the limit is 255); the temp name is shorter
    assert write_text(path, "hi\n").read_text() == "hi\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_is_flushed_to_disk(tmp_path, monkeypatch):
    import os

    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    path = write_text(tmp_path / "a.md", "hi\n")
    assert synced == [path.stat().st_ino, tmp_path.stat().st_ino]  # the file before the rename, the folder after it


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "a.png", "--save", IMAGE_SUFFIXES) == tmp_path / "a.png"
    with pytest.raises(ValueError, match=r"--save '.*a\.txt' has to end in one of \.png"):
        check_output_file(tmp_path / "a.txt", "--save", IMAGE_SUFFIXES)
    with pytest.raises(ValueError, match="the folder '.*missing' of --save .* does not exist"):
        check_output_file(tmp_path / "missing" / "a.png", "--save")
    assert check_output_file(tmp_path / "missing" / "deeper" / "a.png", "--out", create_folder=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="does not exist"):
        check_output_file(tmp_path / "file" / "a.png", "--out", create_folder=True)  # a file in the way
    with pytest.raises(ValueError, match="is a folder"):
        check_output_file(tmp_path, "--out")
    assert not (tmp_path / "missing").exists()  # checking creates nothing


def test_no_debris_removes_only_what_a_failed_run_left_empty(tmp_path):
    from vcontrast.atomic import no_debris

    path = tmp_path / "a" / "b" / "out.jsonl"
    with pytest.raises(ValueError, match="first batch"), no_debris(path) as p, p.open("a"):
        raise ValueError("first batch failed")
    assert list(tmp_path.iterdir()) == []  # no 0-byte file, no empty folders
    with pytest.raises(ValueError, match="later"), no_debris(path) as p:
        p.write_text('{"id": "0"}\n')
        raise ValueError("later batch failed")
    assert path.read_text() == '{"id": "0"}\n'  # records stay, for the rerun to resume
    with no_debris(path) as p:
        p.write_text("")
    assert path.exists()  # success keeps everything, even an empty file
