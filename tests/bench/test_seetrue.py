"""SeeTRUE loader on a fixture CSV with the official columns."""

import csv

import pytest

from vcontrast.bench import seetrue
from vcontrast.bench.metrics import compute_metrics

ROWS = [
    ("a.png", "a red square", 1, "1", "Winoground"),
    ("b.png", "a blue square", 0, "2", "Winoground"),
    ("c.png", "two dogs", 1, "3", "DrawBench"),
    ("d.png", "one dog", 0, "4", "DrawBench"),
]


def _write(root, make_image, columns=("image", "text", "label", "original_dataset_id", "dataset_source")):
    with (root / "SeeTRUE.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in ROWS:
            make_image(root / "images" / row[0])
            w.writerow(row[: len(columns)])


def test_load_and_score(tmp_path, make_image):
    _write(tmp_path, make_image)
    items = seetrue.load(tmp_path)
    assert [it.label for it in items] == [1, 0, 1, 0]
    assert items[0].task == "match" and items[0].prompt == "a red square"
    assert items[0].image == str(tmp_path / "images" / "a.png")
    assert items[2].meta == {"dataset_source": "DrawBench", "original_dataset_id": "3", "split": "DrawBench"}
    assert [it.id for it in seetrue.load(tmp_path, split="DrawBench")] == ["DrawBench/3", "DrawBench/4"]
    assert len(seetrue.load(tmp_path, limit=1)) == 1

    p_yes = {"Winoground/1": 0.9, "Winoground/2": 0.6, "DrawBench/3": 0.6, "DrawBench/4": 0.2}
    out = compute_metrics("seetrue", items, {k: {"p_yes": v} for k, v in p_yes.items()})
    # pos {0.9, 0.6} vs neg {0.6, 0.2}: 1 + 1 + 0.5 + 1 = 3.5 / 4; F1: TP 2, FP 1 -> 0.8
    assert out["pooled/auroc"] == 0.875 and out["pooled/f1"] == pytest.approx(0.8)
    assert out["Winoground/auroc"] == 1.0 and out["DrawBench/auroc"] == 1.0 and out["mean/auroc"] == 1.0
    assert "auroc" not in out  # the pooled AUROC is no official SeeTRUE number


def test_missing_and_bad(tmp_path, make_image):
    with pytest.raises(ValueError, match="missing file .*SeeTRUE.csv"):
        seetrue.load(tmp_path)
    _write(tmp_path, make_image, columns=("image", "caption", "label"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['text'\]"):
        seetrue.load(tmp_path)
    _write(tmp_path, make_image)
    with pytest.raises(ValueError, match="unknown split 'COCO'"):
        seetrue.load(tmp_path, split="COCO")
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(ValueError, match="image not found"):
        seetrue.load(tmp_path)


def test_public_csv_name(tmp_path, make_image):
    _write(tmp_path, make_image)
    (tmp_path / "SeeTRUE.csv").rename(tmp_path / "SeeTRUE_public.csv")
    items = seetrue.load(tmp_path)
    assert [it.id for it in items] == ["Winoground/1", "Winoground/2", "DrawBench/3", "DrawBench/4"]


def test_ids_come_from_the_data_not_positions(tmp_path, make_image):
    _write(tmp_path, make_image)
    first = {it.id: it.prompt for it in seetrue.load(tmp_path)}
    lines = (tmp_path / "SeeTRUE.csv").read_text().splitlines()
    (tmp_path / "SeeTRUE.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert {it.id: it.prompt for it in seetrue.load(tmp_path)} == first  # same id, same row content
