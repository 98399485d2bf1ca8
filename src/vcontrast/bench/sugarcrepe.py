"""SugarCrepe (Hsieh et al., NeurIPS 2023 Datasets and Benchmarks): positive vs hard-negative caption.

Format source: the paper "SugarCrepe: Fixing Hackable Benchmarks for Vision-Language Compositionality" and its
repository `RAIVNLab/sugar-crepe` (`data/*.json`, `main_eval.py`). Seven split files, each a JSON object
`{"<id>": {"filename": "000000252219.jpg", "caption": positive, "negative_caption": hard negative}}`; the images
are COCO val2017. Expected layout under `data_dir`:

```
data_dir/
  add_att.json add_obj.json replace_att.json replace_obj.json replace_rel.json swap_att.json swap_obj.json
  val2017/000000252219.jpg ...
```

The split files may also sit in `data_dir/data/` (the repository layout). An early revision of the repository named
the object splits `add_ent.json`, `replace_ent.json`, `swap_ent.json`; those names are read for the `*_obj` splits
when the `*_obj` file is absent.

The images may live anywhere else: `image_root` (`--image-root`) names the folder of COCO val2017 images, looked up
first.

Items: task "choice", `candidates = [caption, negative_caption]`, `answer` 0, `prompt` = `PROMPT` (SugarCrepe has
no prompt), `regions` empty. `split=None` loads every split file present; `limit` applies per split. Metric
(`main_eval.py`): accuracy per split, correct iff the positive scores strictly higher than the negative (a tie is
wrong); the paper reports each split, so `compute_metrics` gives `<split>/accuracy`, their unweighted mean
`mean/accuracy` and the accuracy over all items as `pooled/accuracy` only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vcontrast.bench.items import Item
from vcontrast.bench.registry import (
    Benchmark,
    check_limit,
    find_image,
    read_json,
    require_dir,
    require_text,
    row_error,
    select_splits,
)

logger = logging.getLogger(__name__)

PROMPT = "Describe the image in one sentence."
SPLITS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
_LEGACY = {"add_obj": "add_ent", "replace_obj": "replace_ent", "swap_obj": "swap_ent"}
_LAYOUT = (
    "  <data_dir>/{add_att,add_obj,replace_att,replace_obj,replace_rel,swap_att,swap_obj}.json\n"
    "  <data_dir>/val2017/<filename>   (COCO 2017 validation images)\n"
    "from github.com/RAIVNLab/sugar-crepe (data/ folder) and images.cocodataset.org/zips/val2017.zip"
)


def _split_file(root: Path, split: str) -> Path | None:
    for folder in (root, root / "data"):
        for stem in (split, _LEGACY.get(split)):
            if stem is not None and (folder / f"{stem}.json").is_file():
                return folder / f"{stem}.json"
    return None


def load(
    data_dir: str | Path,
    split: str | None = None,
    limit: int | None = None,
    *,
    image_root: str | Path | None = None,
) -> list[Item]:
    """Load SugarCrepe split files (see the module docstring for the layout).

    Args:
        data_dir (`str` or `Path`): folder with the seven `<split>.json` files and `val2017/`.
        split (`str`, *optional*): one of `SPLITS`; `None` loads every split file present.
        limit (`int`, *optional*): keep the first `limit` items of each split (file order).
        image_root (`str` or `Path`, *optional*): folder holding the COCO val2017 images (`<image_root>/<filename>`)
            when they are not in `data_dir/val2017/`.

    Returns:
        `list[Item]`: "choice" items `[caption, negative_caption]` with `answer=0`, ids `"<split>/<key>"`.

    Examples:

    ```python
    >>> items = load("sugar-crepe", split="swap_att", limit=4)  # doctest: +SKIP
    >>> items[0].candidates  # doctest: +SKIP
    ['A white cat on a black couch.', 'A black cat on a white couch.']
    ```
    """
    check_limit(limit)
    root = require_dir(data_dir, "sugarcrepe", _LAYOUT)
    image_dirs = [root / "val2017", root]
    if image_root is not None:
        image_dirs.insert(0, require_dir(image_root, "sugarcrepe", "  image_root: the folder of COCO val2017 images"))
    items: list[Item] = []
    found = 0
    for name in select_splits(split, SPLITS, "sugarcrepe"):
        path = _split_file(root, name)
        if path is None:
            if split is not None:
                raise ValueError(f"sugarcrepe: missing file {root / (name + '.json')}. Expected layout:\n{_LAYOUT}")
            logger.info("sugarcrepe: no file for split %r in %s, skipping", name, root)
            continue
        found += 1
        records = read_json(
            path, "sugarcrepe", expect=dict, shape="an object {id: {filename, caption, negative_caption}}"
        )
        for key, rec in list(records.items())[:limit]:
            row = f"key {key!r}"
            if not isinstance(rec, dict):
                raise row_error("sugarcrepe", path, row, None, "must be {filename, caption, negative_caption}")
            for field in ("filename", "caption", "negative_caption"):
                require_text(rec.get(field), "sugarcrepe", path, row, field)
            image = find_image(
                [d / rec["filename"] for d in image_dirs], "sugarcrepe", _LAYOUT, (path, row, "filename")
            )
            items.append(
                Item(
                    id=f"{name}/{key}",
                    task="choice",
                    image=str(image),
                    prompt=PROMPT,
                    candidates=[rec["caption"], rec["negative_caption"]],
                    answer=0,
                    meta={"split": name, "key": key, "filename": rec["filename"]},
                )
            )
    if found == 0:
        raise ValueError(f"sugarcrepe: no split file found in {root}. Expected layout:\n{_LAYOUT}")
    return items


SUGARCREPE = Benchmark(
    name="sugarcrepe",
    loader=load,
    splits=SPLITS,
    metrics={"choice": ("accuracy",)},
    options=("image_root",),
    official_per_split=True,
    reference="Hsieh et al., NeurIPS 2023 D&B; github.com/RAIVNLab/sugar-crepe",
)
