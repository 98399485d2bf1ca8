"""SeeTRUE (Yarom et al., NeurIPS 2023): image-text alignment, yes/no.

Format source: the paper "What You See is What You Read? Improving Text-Image Alignment Evaluation"
(arXiv 2305.10400) and its Hugging Face dataset `yonatanbitton/SeeTRUE` (`SeeTRUE.csv`, `images.zip`, loading
script `SeeTRUE.py`). The CSV has the columns `image` (file name), `text`, `label` (1 = the text matches the image),
`original_dataset_id` and `dataset_source` (SNLI-VE, Winoground, DrawBench, EditBench, COCO t2i, ...). The loading
script joins `images/` and the `image` column. Expected layout under `data_dir`:

```
data_dir/
  SeeTRUE.csv
  images/<image>        (images.zip extracted)
```

Splits: SeeTRUE is one test set; `split` optionally selects one `dataset_source` value (the paper reports AUROC per
source), `None` loads all rows. `limit` keeps the first rows (of that source).

Items: task "match", `prompt` = the text, `label` 0/1, ids = CSV row index, `meta` = `dataset_source` and
`original_dataset_id`. Metrics: AUROC of P("yes") (the paper's metric) and F1 at P("yes") >= 0.5.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vcontrast.bench.items import Item
from vcontrast.bench.registry import Benchmark, check_limit, find_image, require_dir, require_file

CSV_NAME = "SeeTRUE.csv"
COLUMNS = ("image", "text", "label")
_LAYOUT = (
    "  <data_dir>/SeeTRUE.csv   (columns image, text, label, original_dataset_id, dataset_source)\n"
    "  <data_dir>/images/<image>\n"
    "from huggingface.co/datasets/yonatanbitton/SeeTRUE (SeeTRUE.csv, images.zip)"
)


def load(data_dir: str | Path, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Load SeeTRUE from `SeeTRUE.csv` and `images/`.

    Args:
        data_dir (`str` or `Path`): folder with `SeeTRUE.csv` and `images/`.
        split (`str`, *optional*): a `dataset_source` value (e.g. "Winoground"); `None` keeps every row.
        limit (`int`, *optional*): keep the first `limit` rows (after the `split` filter).

    Returns:
        `list[Item]`: "match" items with `label` 1 (matches) or 0.

    Examples:

    ```python
    >>> items = load("SeeTRUE", split="Winoground")  # doctest: +SKIP
    >>> items[0].prompt, items[0].label  # doctest: +SKIP
    ('some plants surrounding a lightbulb', 1)
    ```
    """
    check_limit(limit)
    root = require_dir(data_dir, "seetrue", _LAYOUT)
    path = require_file(root / CSV_NAME, "seetrue", _LAYOUT)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"seetrue: {path} lacks column(s) {missing}; found {columns}. Expected layout:\n{_LAYOUT}"
            )
        rows = list(enumerate(reader))
    if split is not None:
        sources = sorted({row.get("dataset_source") or "" for _, row in rows})
        if split not in sources:
            raise ValueError(f"seetrue: unknown split {split!r}; `dataset_source` values in {path} are {sources}")
        rows = [(i, row) for i, row in rows if row.get("dataset_source") == split]
    items = []
    for i, row in rows[:limit]:
        try:
            label = int(float(row["label"]))
        except (TypeError, ValueError):
            label = -1
        if label not in (0, 1):
            raise ValueError(f"seetrue: {path} row {i}: `label` (={row['label']!r}) must be 0 or 1")
        image = find_image([root / "images" / row["image"], root / row["image"]], "seetrue", _LAYOUT)
        meta = {k: row[k] for k in ("dataset_source", "original_dataset_id") if row.get(k) not in (None, "")}
        if "dataset_source" in meta:
            meta["split"] = meta["dataset_source"]
        items.append(Item(id=str(i), task="match", image=str(image), prompt=row["text"], label=label, meta=meta))
    return items


SEETRUE = Benchmark(
    name="seetrue",
    loader=load,
    splits=(),
    metrics={"match": ("auroc", "f1")},
    reference="Yarom et al., NeurIPS 2023 (arXiv 2305.10400); huggingface.co/datasets/yonatanbitton/SeeTRUE",
)
