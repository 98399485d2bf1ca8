"""What'sUp (Kamath, Hessel and Chang, EMNLP 2023): spatial-relation caption choice.

Format source: the paper "What's "up" with vision-language models? Investigating their struggle with spatial
reasoning" and its repository `amitakamath/whatsup_vlms` (`dataset_zoo/aro_datasets.py`, README). Every file lists
the caption options with **the correct one first**. Expected layout under `data_dir` (the repository's `data/`
folder, as downloaded from the authors' Google Drive):

```
data_dir/
  controlled_images_dataset.json   Controlled-A: [{"image_path": "data/controlled_images/mug_left_of_table.jpeg",
  controlled_images/                              "caption_options": [4 captions, first correct]}, ...]
  controlled_clevr_dataset.json    Controlled-B (CLEVR renders), same schema
  controlled_clevr/
  coco_qa_one_obj.json             COCO-spatial, one / two objects: [[coco_image_id, correct, wrong], ...]
  coco_qa_two_obj.json
  val2017/000000xxxxxx.jpg         COCO val2017, file name = 12-digit zero-padded id
  vg_qa_one_obj.json               GQA-spatial, one / two objects: [[vg_image_id, correct, wrong], ...]
  vg_qa_two_obj.json
  vg_images/<vg_image_id>.jpg
```

The controlled `image_path` values carry the authors' `data/` prefix; an image is looked up as
`<folder>/<file name>`, then as the path relative to `data_dir`, then relative to its parent.

Splits: `controlled_a`, `controlled_b`, `coco_spatial_one`, `coco_spatial_two`, `gqa_spatial_one`,
`gqa_spatial_two`. `split=None` loads every split whose file is present; `limit` applies per split.

Items: task "choice", `candidates` in file order, `answer` 0, `prompt` = `PROMPT` (the official data has no prompt:
it was built for CLIP-style image-caption scores, so we pick one neutral instruction), `regions` empty (CRG's region
proposer fills them from the caption nouns).

Pair and set accuracy (paper Section 3 / Table 3, repository `Controlled_Images.evaluate_scores`): each controlled
image shows one object pair in one relation, and its file name is `<object1>_<relation>_<object2>.<ext>` with
relation `left_of`, `right_of`, `on`, `under` (A) or `left_of`, `right_of`, `in-front_of`, `behind` (B). The four
images of one object pair form a **set** (`meta["set_id"]` = split + the two objects); the two images of one
opposite-relation axis form a **pair** (`meta["pair_id"]` = set + axis: left/right, on/under, front/behind). Pair
(set) accuracy is the fraction of pairs (sets) with every image answered correctly. The authors divide by N/2 and
N/4, which is the same number when every group is complete; we divide by the number of groups present, so a
`limit` that cuts a group scores its present members only. COCO/GQA-spatial have no groups and report accuracy.

Headline numbers: the paper reports every subset on its own, so `compute_metrics` gives `<split>/accuracy` (and
`<split>/pair_accuracy`, `<split>/set_accuracy` for the controlled subsets), `mean/<metric>` = the unweighted average
over the subsets present (pair/set: over the controlled subsets), and the accuracy over all items, which mixes 4-way
and 2-way choices, only as `pooled/accuracy`.

Item ids come from the data: `<split>/<image file stem>` for the controlled subsets, `<split>/<image id>` for
COCO/GQA-spatial (`#2`, `#3`, ... for further entries about the same image).
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

# split -> (annotation file, image folder, kind)
_FILES: dict[str, tuple[str, str, str]] = {
    "controlled_a": ("controlled_images_dataset.json", "controlled_images", "controlled"),
    "controlled_b": ("controlled_clevr_dataset.json", "controlled_clevr", "controlled"),
    "coco_spatial_one": ("coco_qa_one_obj.json", "val2017", "coco"),
    "coco_spatial_two": ("coco_qa_two_obj.json", "val2017", "coco"),
    "gqa_spatial_one": ("vg_qa_one_obj.json", "vg_images", "vg"),
    "gqa_spatial_two": ("vg_qa_two_obj.json", "vg_images", "vg"),
}
SPLITS = tuple(_FILES)

_LAYOUT = (
    "  <data_dir>/controlled_images_dataset.json + controlled_images/    (controlled_a)\n"
    "  <data_dir>/controlled_clevr_dataset.json + controlled_clevr/      (controlled_b)\n"
    "  <data_dir>/coco_qa_{one,two}_obj.json + val2017/<12-digit id>.jpg (coco_spatial_one/two)\n"
    "  <data_dir>/vg_qa_{one,two}_obj.json + vg_images/<id>.jpg          (gqa_spatial_one/two)\n"
    "from github.com/amitakamath/whatsup_vlms (data/ folder)"
)

# relation in the file name -> the axis whose two opposite relations form a pair
_AXES = {
    "left_of": "left_right",
    "right_of": "left_right",
    "on": "on_under",
    "under": "on_under",
    "in-front_of": "front_behind",
    "behind": "front_behind",
}


def _parse_controlled_name(image_path: str) -> tuple[str, str, str] | None:
    # "mug_left_of_table.jpeg" -> ("mug", "left_of", "table"); objects use hyphens, never underscores.
    parts = Path(image_path).stem.split("_")
    if len(parts) < 3:
        return None
    return parts[0], "_".join(parts[1:-1]), parts[-1]


def _controlled_items(records: list, path: Path, split: str, folder: str, data_dir: Path) -> list[Item]:
    items = []
    for i, rec in enumerate(records):
        row = f"entry {i}"
        if not isinstance(rec, dict):
            raise row_error("whatsup", path, row, None, "must be {'image_path': str, 'caption_options': [str, ...]}")
        rel_path = require_text(rec.get("image_path"), "whatsup", path, row, "image_path")
        _check_captions(rec.get("caption_options"), path, row, "caption_options")
        candidates = [data_dir / folder / Path(rel_path).name, data_dir / rel_path, data_dir.parent / rel_path]
        image = find_image(candidates, "whatsup", _LAYOUT, (path, row, "image_path"))
        meta = {"split": split, "source_image_path": rel_path}
        parsed = _parse_controlled_name(rel_path)
        if parsed is not None and parsed[1] in _AXES:
            obj1, relation, obj2 = parsed
            set_id = f"{split}:{obj1}|{obj2}"
            meta.update(relation=relation, set_id=set_id, pair_id=f"{set_id}:{_AXES[relation]}")
        else:
            logger.warning("whatsup: cannot read the relation from %r; it is left out of pair/set accuracy", rel_path)
        # The image file name identifies a controlled item (one image per object pair and relation).
        items.append(_item(f"{split}/{Path(rel_path).stem}", str(image), list(rec["caption_options"]), meta))
    return items


def _qa_items(records: list, path: Path, split: str, folder: str, kind: str, data_dir: Path) -> list[Item]:
    items = []
    seen: dict[int, int] = {}
    for i, rec in enumerate(records):
        row = f"entry {i}"
        if not (isinstance(rec, list) and len(rec) == 3):
            shape = f"must be [image_id, correct caption, wrong caption], got {rec!r}"
            raise row_error("whatsup", path, row, None, shape)
        image_id = rec[0]
        if isinstance(image_id, str) and image_id.isdigit():
            image_id = int(image_id)
        if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id < 0:
            raise row_error("whatsup", path, row, "image_id", f"(={rec[0]!r}, first element) must be an integer")
        _check_captions(rec[1:], path, row, "captions")
        name = f"{image_id:012d}.jpg" if kind == "coco" else f"{image_id}.jpg"
        image = find_image([data_dir / folder / name], "whatsup", _LAYOUT, (path, row, "image_id"))
        # Ids from the data: the image id, and "#k" for the k-th further question about the same image.
        seen[image_id] = seen.get(image_id, 0) + 1
        item_id = f"{split}/{image_id}" + (f"#{seen[image_id]}" if seen[image_id] > 1 else "")
        meta = {"split": split, "image_id": image_id}
        items.append(_item(item_id, str(image), [rec[1], rec[2]], meta))
    return items


def _check_captions(value: object, path: Path, row: str, field: str) -> None:
    if not (isinstance(value, list) and len(value) >= 2 and all(isinstance(c, str) and c.strip() for c in value)):
        raise row_error("whatsup", path, row, field, f"(={value!r}) must be two or more non-empty caption strings")


def _item(item_id: str, image: str, candidates: list[str], meta: dict) -> Item:
    return Item(id=item_id, task="choice", image=image, prompt=PROMPT, candidates=candidates, answer=0, meta=meta)


def load(data_dir: str | Path, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Load What'sUp from the authors' `data/` layout (see the module docstring).

    Args:
        data_dir (`str` or `Path`): folder holding the annotation JSONs and image folders.
        split (`str`, *optional*): one of `SPLITS`; `None` loads every split whose file is present.
        limit (`int`, *optional*): keep the first `limit` items of each split.

    Returns:
        `list[Item]`: "choice" items, gold caption first (`answer=0`).

    Examples:

    ```python
    >>> items = load("whatsup_vlms/data", split="controlled_a", limit=8)  # doctest: +SKIP
    >>> items[0].candidates[0], items[0].meta["pair_id"]  # doctest: +SKIP
    ('A beer bottle on a armchair', 'controlled_a:beer-bottle|armchair:on_under')
    ```
    """
    check_limit(limit)
    root = require_dir(data_dir, "whatsup", _LAYOUT)
    wanted = select_splits(split, SPLITS, "whatsup")
    items: list[Item] = []
    found = 0
    for name in wanted:
        file_name, folder, kind = _FILES[name]
        path = root / file_name
        if not path.is_file():
            if split is not None:
                raise ValueError(f"whatsup: missing file {path} for split {name!r}. Expected layout:\n{_LAYOUT}")
            logger.info("whatsup: %s not found, skipping split %r", path, name)
            continue
        found += 1
        records = read_json(path, "whatsup", expect=list)[:limit]
        if kind == "controlled":
            items += _controlled_items(records, path, name, folder, root)
        else:
            items += _qa_items(records, path, name, folder, kind, root)
    if found == 0:
        raise ValueError(f"whatsup: no annotation file found in {root}. Expected layout:\n{_LAYOUT}")
    return items


WHATSUP = Benchmark(
    name="whatsup",
    loader=load,
    splits=SPLITS,
    metrics={"choice": ("accuracy", "pair_accuracy", "set_accuracy")},
    official_per_split=True,
    reference="Kamath et al., EMNLP 2023; github.com/amitakamath/whatsup_vlms",
)
