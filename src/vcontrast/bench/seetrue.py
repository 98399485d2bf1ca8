"""SeeTRUE (Yarom et al., NeurIPS 2023): image-text alignment, yes/no.

Format source: the paper "What You See is What You Read? Improving Text-Image Alignment Evaluation"
(arXiv 2305.10400) and its Hugging Face dataset `yonatanbitton/SeeTRUE` (`SeeTRUE.csv`, `images.zip`, loading
script `SeeTRUE.py`). The CSV has the columns `image` (file name), `text`, `label` (1 = the text matches the image),
`original_dataset_id` and `dataset_source` (SNLI-VE, Winoground, DrawBench, EditBench, COCO t2i, ...). The loading
script joins `images/` and the `image` column. Expected layout under `data_dir`:

```
data_dir/
  SeeTRUE.csv           (or SeeTRUE_public.csv, the name of the public release; the first found is read)
  images/<image>        (images.zip extracted)
```

Splits: SeeTRUE is one test set; `split` optionally selects one `dataset_source` value (the paper reports AUROC per
source), `None` loads all rows. `limit` keeps the first rows (of that source).

Items: task "match", `prompt` = the text, `label` 0/1, ids `"<dataset_source>/<original_dataset_id>"` (from the
data, never the row position), `meta` = `dataset_source` and `original_dataset_id`. Metrics: AUROC of P("yes") (the
paper's metric) and F1 at P("yes") >= 0.5, per source (the paper reports each source), their unweighted mean
(`mean/auroc`), and over all rows only as `pooled/auroc`.
"""

from __future__ import annotations

from pathlib import Path

from vcontrast.bench.items import Item
from vcontrast.bench.registry import (
    Benchmark,
    check_limit,
    find_image,
    read_csv_rows,
    require_dir,
    require_file,
    require_text,
    row_error,
)

CSV_NAMES = ("SeeTRUE.csv", "SeeTRUE_public.csv")  # the first found is read
COLUMNS = ("image", "text", "label")
_LAYOUT = (
    "  <data_dir>/SeeTRUE.csv or SeeTRUE_public.csv\n"
    "      (columns image, text, label, original_dataset_id, dataset_source)\n"
    "  <data_dir>/images/<image>\n"
    "from huggingface.co/datasets/yonatanbitton/SeeTRUE (SeeTRUE.csv, images.zip)"
)


def _csv_path(root: Path) -> Path:
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    return require_file(root / CSV_NAMES[0], "seetrue", _LAYOUT)


def load(data_dir: str | Path, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Load SeeTRUE from `SeeTRUE.csv` (or `SeeTRUE_public.csv`) and `images/`.

    Args:
        data_dir (`str` or `Path`): folder with the CSV and `images/`.
        split (`str`, *optional*): a `dataset_source` value (e.g. "Winoground"); `None` keeps every row.
        limit (`int`, *optional*): keep the first `limit` rows (after the `split` filter).

    Returns:
        `list[Item]`: "match" items with `label` 1 (matches) or 0, ids `"<dataset_source>/<original_dataset_id>"`.

    Examples:

    ```python
    >>> items = load("SeeTRUE", split="Winoground")  # doctest: +SKIP
    >>> items[0].prompt, items[0].label  # doctest: +SKIP
    ('some plants surrounding a lightbulb', 1)
    ```
    """
    check_limit(limit)
    root = require_dir(data_dir, "seetrue", _LAYOUT)
    path = _csv_path(root)
    rows = list(read_csv_rows(path, "seetrue", COLUMNS, _LAYOUT))
    if split is not None:
        sources = sorted({row.get("dataset_source") or "" for _, row in rows})
        if split not in sources:
            raise ValueError(f"seetrue: unknown split {split!r}; `dataset_source` values in {path} are {sources}")
        rows = [(line, row) for line, row in rows if row.get("dataset_source") == split]
    items = []
    seen: dict[str, int] = {}
    for line, row in rows[:limit]:
        where = f"line {line}"
        require_text(row["image"], "seetrue", path, where, "image")
        text = require_text(row["text"], "seetrue", path, where, "text")
        try:
            label = int(float(row["label"]))
        except (TypeError, ValueError):
            label = -1
        if label not in (0, 1) or str(row["label"]).strip() not in ("0", "1", "0.0", "1.0"):
            raise row_error("seetrue", path, where, "label", f"(={row['label']!r}) must be 0 or 1")
        image = find_image(
            [root / "images" / row["image"], root / row["image"]], "seetrue", _LAYOUT, (path, where, "image")
        )
        meta = {k: row[k] for k in ("dataset_source", "original_dataset_id") if row.get(k) not in (None, "")}
        if "dataset_source" in meta:
            meta["split"] = meta["dataset_source"]
        # Ids from the data: source and the original dataset's id (the image name without one); "#k" marks the k-th
        # further row with the same pair.
        key = f"{meta.get('dataset_source', 'seetrue')}/{meta.get('original_dataset_id', row['image'])}"
        seen[key] = seen.get(key, 0) + 1
        item_id = key + (f"#{seen[key]}" if seen[key] > 1 else "")
        items.append(Item(id=item_id, task="match", image=str(image), prompt=text, label=label, meta=meta))
    return items


SEETRUE = Benchmark(
    name="seetrue",
    loader=load,
    splits=(),
    metrics={"match": ("auroc", "f1")},
    official_per_split=True,
    reference="Yarom et al., NeurIPS 2023 (arXiv 2305.10400); huggingface.co/datasets/yonatanbitton/SeeTRUE",
)
