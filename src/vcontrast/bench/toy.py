"""The toy world's benchmark: `Item` JSONL files written by `vcontrast.toy`, scored with the same metrics.

Format source: `vcontrast.bench.items` (one `Item.to_json()` object a line, image paths relative to the file) and
`vcontrast.toy.tasks.make_split`, which writes one file per toy task and split. Expected layout under `data_dir`:

```
data_dir/
  spatial_test.jsonl swap_test.jsonl vqa_test.jsonl ...   ({task}_{split}.jsonl; a plain {split}.jsonl also works)
  images/...                                              wherever the items' relative `image` paths point
```

`split` "test" (the default for `None`) reads `test.jsonl` and every `*_test.jsonl`; a full file stem such as
"spatial_test" reads that one file. `limit` keeps the first items of each file. Each item's `meta["split"]` is set
to its file stem ("spatial_test"), so `compute_metrics` reports every toy task separately as well as pooled.

Metrics by task (toy files mix tasks; results are keyed "task/metric"):
"choice": accuracy, pair and set accuracy (from `meta["pair_id"]` / `meta["set_id"]`, when present);
"match": AUROC and F1 at P(yes) >= 0.5; "refexp": acc@0.5; "vqa", "region_vqa", "caption": exact match.
"""

from __future__ import annotations

from pathlib import Path

from vcontrast.bench.items import Item, read_items
from vcontrast.bench.registry import Benchmark, check_limit, require_dir

DEFAULT_SPLIT = "test"
_LAYOUT = (
    "  <data_dir>/{task}_{split}.jsonl or <data_dir>/{split}.jsonl "
    "(one vcontrast.bench.Item JSON object a line; default split 'test'), written by vcontrast.toy.tasks.make_split"
)


def _files(root: Path, split: str) -> list[Path]:
    exact = root / f"{split}.jsonl"
    return ([exact] if exact.is_file() else []) + sorted(p for p in root.glob(f"*_{split}.jsonl") if p != exact)


def load(data_dir: str | Path, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Read the toy world's JSONL files of one split with `read_items`.

    Args:
        data_dir (`str` or `Path`): folder of the toy world's JSONL files.
        split (`str`, *optional*, defaults to "test"): "train", "test", or one file stem such as "vqa_test".
        limit (`int`, *optional*): keep the first `limit` items of each file.

    Returns:
        `list[Item]`: the items as written, image paths made absolute against the file's folder and
        `meta["split"]` set to the file stem.

    Examples:

    ```python
    >>> items = load("toy_data", split="test", limit=100)  # doctest: +SKIP
    >>> sorted({item.meta["split"] for item in items})  # doctest: +SKIP
    ['match_test', 'spatial_test', 'vqa_test']
    ```
    """
    check_limit(limit)
    root = require_dir(data_dir, "toy", _LAYOUT)
    split = split or DEFAULT_SPLIT
    files = _files(root, split)
    if not files:
        found = sorted(p.stem for p in root.glob("*.jsonl"))
        raise ValueError(
            f"toy: no {split}.jsonl or *_{split}.jsonl in {root} (files found: {found or 'none'}). "
            f"Expected layout:\n{_LAYOUT}"
        )
    items = []
    for path in files:
        for n, item in enumerate(read_items(path)):
            if limit is not None and n >= limit:
                break
            item.meta["split"] = path.stem
            items.append(item)
    return items


TOY = Benchmark(
    name="toy",
    loader=load,
    splits=(),
    metrics={
        "choice": ("accuracy", "pair_accuracy", "set_accuracy"),
        "match": ("auroc", "f1"),
        "refexp": ("acc@0.5",),
        "vqa": ("exact_match",),
        "region_vqa": ("exact_match",),
        "caption": ("exact_match",),
    },
    default_split=DEFAULT_SPLIT,
    reference="vcontrast.toy (built-in procedurally generated scenes)",
)
