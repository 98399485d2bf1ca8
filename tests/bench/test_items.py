import json

import pytest
from PIL import Image

from vcontrast.bench.fingerprint import record_reads
from vcontrast.bench.items import Item, read_items, write_items


def test_round_trip_and_bad_rows_name_the_line(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    item = Item(id="a", task="choice", image="x.png", prompt="which?", candidates=["one", "two"], answer=0)
    path = tmp_path / "items.jsonl"
    assert write_items([item], path) == 1
    with record_reads() as reads:
        (got,) = read_items(path)
    assert got.candidates == ["one", "two"] and got.image == str(tmp_path / "x.png")
    assert reads == [path.resolve()]
    path.write_text('{"id": "b", "task": "vqa", "image": "x.png"}\n')
    with pytest.raises(ValueError, match=r"items.jsonl:1: Item 'b': missing keys \['prompt'\]"):
        list(read_items(path))
    path.write_text('["not", "an", "object"]\n')
    with pytest.raises(ValueError, match="items.jsonl:1: an item has to be a JSON object"):
        list(read_items(path))


def test_missing_image_and_empty_text_name_the_line_and_item(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    path = tmp_path / "items.jsonl"
    good = Item(id="a", task="vqa", image="x.png", prompt="what?")
    bad = Item(id="b", task="vqa", image="nope.png", prompt="what?")
    write_items([good, bad], path)
    with pytest.raises(ValueError, match=r"items.jsonl:2: item 'b': `image` file .*nope.png does not exist"):
        list(read_items(path))
    path.write_text('{"id": "c", "task": "match", "image": "x.png", "prompt": " ", "label": 1}\n')
    with pytest.raises(ValueError, match=r"items.jsonl:1: Item 'c': `prompt` \(=' '\) must be a non-empty string"):
        list(read_items(path))


def test_read_jsonl_rows_names_file_line_and_field(tmp_path):
    from vcontrast.bench.registry import read_jsonl_rows

    path = tmp_path / "q.jsonl"
    path.write_text('{"a": 1, "b": 2}\n\n{"a": 3}\n')
    rows = read_jsonl_rows(path, "demo", ("a", "b"))
    assert next(rows) == (1, {"a": 1, "b": 2})
    with pytest.raises(ValueError, match=r"demo: .*q.jsonl, line 3: `b` is missing"):
        next(rows)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"q.jsonl, line 1: not valid JSON"):
        list(read_jsonl_rows(path, "demo", ("a",)))


def test_read_csv_rows_counts_lines_as_the_file_does(tmp_path):
    from vcontrast.bench.registry import read_csv_rows

    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,"two\nlines"\n3,4\n')
    assert [(n, r["a"]) for n, r in read_csv_rows(path, "demo", ("a",))] == [(2, "1"), (4, "3")]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['c'\]"):
        list(read_csv_rows(path, "demo", ("a", "c")))


def test_boxes_are_checked_with_the_library_rules(tmp_path):
    # xyxy boxes given as COCO's xywh (x1 < x0) scored acc@0.5 0.0 silently
    refexp = {"id": "r", "task": "refexp", "image": "x.png", "prompt": "the cup"}
    with pytest.raises(
        ValueError, match=r"Item 'r': `target` box \[20, 26, 15, 15\] is inverted.*COCO's \[x, y, w, h\]"
    ):
        Item(**refexp, target=[20, 26, 15, 15])
    with pytest.raises(ValueError, match=r"Item 'r': `proposals\[1\]` box .* is inverted.*COCO's"):
        Item(**refexp, proposals=[(0, 0, 4, 4), (10, 10, 5, 5)])
    with pytest.raises(ValueError, match=r"Item 'r': `regions\[0\]` box \(2, 2, 2, 8\) has zero area"):
        Item(**refexp, regions=[(2, 2, 2, 8)])
    with pytest.raises(ValueError, match=r"`regions\[0\]` box \[1, 2, 3\] has to be 4 numbers"):
        Item(**refexp, regions=[[1, 2, 3]])
    with pytest.raises(ValueError, match=r"`regions` \(=\(1, 2, 3, 4\)\) must be a list of"):
        Item(**refexp, regions=(1, 2, 3, 4))
    item = Item(**refexp, regions=[[1, 2, 3, 4]], proposals=[[0, 0, 4, 4]], target=[0, 0, 4, 4])
    assert item.regions == [(1.0, 2.0, 3.0, 4.0)] and item.target == (0.0, 0.0, 4.0, 4.0)
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({**refexp, "target": [3, 3, 1, 1]}) + "\n")
    with pytest.raises(ValueError, match=r"items.jsonl:1: Item 'r': `target` box .* is inverted"):
        list(read_items(path))
