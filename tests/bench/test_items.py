import pytest

from vcontrast.bench.items import Item, read_items, write_items


def test_round_trip_and_bad_rows_name_the_line(tmp_path):
    item = Item(id="a", task="choice", image="x.png", prompt="which?", candidates=["one", "two"], answer=0)
    path = tmp_path / "items.jsonl"
    assert write_items([item], path) == 1
    (got,) = read_items(path)
    assert got.candidates == ["one", "two"] and got.image == str(tmp_path / "x.png")
    path.write_text('{"id": "b", "task": "vqa", "image": "x.png"}\n')
    with pytest.raises(ValueError, match=r"items.jsonl:1: Item 'b': missing keys \['prompt'\]"):
        list(read_items(path))
    path.write_text('["not", "an", "object"]\n')
    with pytest.raises(ValueError, match="items.jsonl:1: an item has to be a JSON object"):
        list(read_items(path))


def test_read_jsonl_rows_names_file_and_line(tmp_path):
    from vcontrast.bench.registry import read_jsonl_rows

    path = tmp_path / "q.jsonl"
    path.write_text('{"a": 1, "b": 2}\n\n{"a": 3}\n')
    rows = read_jsonl_rows(path, "demo", ("a", "b"))
    assert next(rows) == (1, {"a": 1, "b": 2})
    with pytest.raises(ValueError, match=r"demo: .*q.jsonl:3 needs keys a, b"):
        next(rows)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1 is not valid JSON"):
        list(read_jsonl_rows(path, "demo", ("a",)))
