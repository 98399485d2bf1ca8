"""RefCOCO, RefCOCO+ and RefCOCOg: referring-expression comprehension as proposal re-ranking.

Format source: the datasets of Kazemzadeh et al. 2014 / Yu et al. 2016 (RefCOCO, RefCOCO+, UNC splits) and Mao et al.
2016 (RefCOCOg, UMD split by Nagaraja et al. 2016) as distributed with the `lichengunc/refer` API: per dataset a
COCO-format `instances.json` (images, annotations with `bbox` = [x, y, w, h]) and a pickled `refs(<splitBy>).p`, a
list of `{ref_id, ann_id, image_id, split, category_id, sentences: [{sent_id, sent, raw, tokens}]}`. vcontrast does
not unpickle downloaded files; convert the pickle once to JSON with the same content:

```
python -c "import json,pickle,sys; json.dump(pickle.load(open(sys.argv[1],'rb')),open(sys.argv[2],'w'))" \\
    'refs(unc).p' 'refs(unc).json'
```

Layout A (refer's `data/` folder; `data_dir` may also be the dataset folder itself):

```
data_dir/
  refcoco/instances.json   refcoco/refs(unc).json       splits train, val, testA, testB
  refcoco+/instances.json  refcoco+/refs(unc).json      splits train, val, testA, testB
  refcocog/instances.json  refcocog/refs(umd).json      splits train, val, test
  images/mscoco/images/train2014/COCO_train2014_*.jpg   (or images/train2014/ or train2014/)
```

Layout B (anything else a user can produce, e.g. from a Hugging Face copy): `data_dir/<split>.jsonl` (or
`data_dir/<dataset>/<split>.jsonl`), one object a line:
`{"image": path relative to the file, "expression": str, "target": [x0, y0, x1, y1],
"proposals": [[x0, y0, x1, y1], ...] (optional), "id": str (optional)}`. Layout B wins when its file exists.

Proposals (`proposals=` argument of `load`): "gt" (default) = the COCO annotation boxes of the image (the standard
ground-truth-proposal setting of MAttNet-style re-ranking), `None` = empty (the region proposer fills them), or a
path to detections in the COCO results format, a JSON list of `{"image_id": int, "bbox": [x, y, w, h]}`.
Layout B items keep the proposals of their own file.

Items: one per (ref, sentence), task "refexp", `prompt` = the expression, `target` = the referred box (xyxy),
`proposals` xyxy, `answer` = index of the proposal with the highest IoU with the target if that IoU is >= 0.5, else
`None`. `split=None` loads "val". Metric: acc@0.5, IoU(chosen box, target) >= 0.5.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np

from vcontrast.bench.items import Box, Item
from vcontrast.bench.metrics import IOU_THRESHOLD, box_iou
from vcontrast.bench.registry import (
    Benchmark,
    check_limit,
    find_image,
    read_json,
    read_jsonl_rows,
    require_dir,
    select_splits,
)

DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    # dataset folder -> (refs file, splits)
    "refcoco": ("refs(unc).json", ("train", "val", "testA", "testB")),
    "refcoco+": ("refs(unc).json", ("train", "val", "testA", "testB")),
    "refcocog": ("refs(umd).json", ("train", "val", "test")),
}
_IMAGE_DIRS = ("images/mscoco/images/train2014", "images/train2014", "train2014", "images")


def _layout(dataset: str) -> str:
    refs = DATASETS[dataset][0]
    return (
        f"  <data_dir>/{dataset}/instances.json + <data_dir>/{dataset}/{refs} "
        f"(pickle {refs[:-5]}.p converted to JSON, see vcontrast.bench.refcoco)\n"
        "  <data_dir>/images/mscoco/images/train2014/ (or images/train2014/, train2014/)\n"
        f"or <data_dir>/<split>.jsonl with {{image, expression, target, proposals?}} per line"
    )


def _xywh_to_xyxy(b: list[float]) -> Box:
    x, y, w, h = (float(v) for v in b)
    return (x, y, x + w, y + h)


def _best_index(proposals: list[Box], target: Box) -> int | None:
    if not proposals:
        return None
    ious = box_iou(np.asarray(proposals), np.asarray([target]))[:, 0]
    best = int(np.argmax(ious))
    return best if ious[best] >= IOU_THRESHOLD else None


def _load_jsonl(path: Path, split: str, limit: int | None) -> list[Item]:
    items = []
    shape = "image, expression, target ([x0, y0, x1, y1])"
    for lineno, row in read_jsonl_rows(path, "refcoco", ("image", "expression", "target"), shape):
        if limit is not None and len(items) >= limit:
            break
        image = Path(row["image"])
        image = image if image.is_absolute() else path.parent / image
        proposals = [tuple(map(float, b)) for b in row.get("proposals", [])]
        target = tuple(map(float, row["target"]))
        if len(target) != 4 or any(len(b) != 4 for b in proposals):
            raise ValueError(f"refcoco: {path}:{lineno}: boxes must be [x0, y0, x1, y1]")
        items.append(
            Item(
                id=f"{split}/{row.get('id', lineno)}",
                task="refexp",
                image=str(image),
                prompt=row["expression"],
                proposals=proposals,
                target=target,
                answer=_best_index(proposals, target),
                meta={"split": split},
            )
        )
    return items


def _detections(path: str | Path) -> dict[int, list[Box]]:
    if not Path(path).is_file():
        raise ValueError(f"refcoco: `proposals` (={str(path)!r}) must be 'gt', None or an existing detections file")
    dets = read_json(Path(path), "refcoco", expect=list, shape="a list of {image_id, bbox: [x, y, w, h]}")
    by_image: dict[int, list[Box]] = defaultdict(list)
    for d in dets:
        by_image[int(d["image_id"])].append(_xywh_to_xyxy(d["bbox"]))
    return by_image


def load(
    data_dir: str | Path,
    split: str | None = None,
    limit: int | None = None,
    *,
    dataset: str = "refcoco",
    proposals: str | Path | None = "gt",
) -> list[Item]:
    """Load RefCOCO / RefCOCO+ / RefCOCOg referring expressions (see the module docstring for both layouts).

    Args:
        data_dir (`str` or `Path`): refer's `data/` folder, the dataset folder, or a folder of `<split>.jsonl`.
        split (`str`, *optional*, defaults to "val"): a split of `dataset` (`DATASETS`).
        limit (`int`, *optional*): keep the first `limit` expressions.
        dataset (`str`, *optional*, defaults to "refcoco"): "refcoco", "refcoco+" or "refcocog".
        proposals (`str`, `Path` or `None`, *optional*, defaults to "gt"): "gt" for the image's COCO boxes, a path to
            COCO-format detections, or `None` for no proposals.

    Returns:
        `list[Item]`: "refexp" items, ids `"<split>/<ref_id>_<sent_id>"`.

    Examples:

    ```python
    >>> items = load("refer/data", split="testA", dataset="refcoco", limit=5)  # doctest: +SKIP
    >>> items[0].prompt, items[0].target, len(items[0].proposals)  # doctest: +SKIP
    ('man in red', (103.9, 300.0, 238.2, 477.4), 7)
    ```
    """
    if dataset not in DATASETS:
        raise ValueError(f"`dataset` (={dataset!r}) must be one of {sorted(DATASETS)}")
    check_limit(limit)
    refs_name, splits = DATASETS[dataset]
    layout = _layout(dataset)
    root = require_dir(data_dir, dataset, layout)
    split = select_splits(split or "val", splits, dataset)[0]

    for folder in (root / dataset, root):
        if (folder / f"{split}.jsonl").is_file():
            return _load_jsonl(folder / f"{split}.jsonl", split, limit)

    folder = root / dataset if (root / dataset).is_dir() else root
    refs_path, instances_path = folder / refs_name, folder / "instances.json"
    if not refs_path.is_file():
        hint = f" (found the pickle {refs_path.with_suffix('.p').name}: convert it to JSON first)"
        hint = hint if refs_path.with_suffix(".p").is_file() else ""
        raise ValueError(f"{dataset}: missing file {refs_path}{hint}. Expected layout:\n{layout}")
    if not instances_path.is_file():
        raise ValueError(f"{dataset}: missing file {instances_path}. Expected layout:\n{layout}")
    refs = read_json(refs_path, dataset, expect=list, shape="a list of refs")
    instances = read_json(instances_path, dataset, expect=dict, shape="a COCO instances object")
    if "annotations" not in instances:
        raise ValueError(f"{dataset}: {instances_path} has no `annotations`; expected a COCO instances.json")

    anns = {a["id"]: a for a in instances["annotations"]}
    anns_by_image: dict[int, list[dict]] = defaultdict(list)
    for a in instances["annotations"]:
        anns_by_image[a["image_id"]].append(a)
    files = {im["id"]: im["file_name"] for im in instances.get("images", [])}
    dets = _detections(proposals) if proposals not in ("gt", None) else None
    image_dirs = [base / d for base in dict.fromkeys((root, folder.parent)) for d in _IMAGE_DIRS]

    items: list[Item] = []
    for ref in refs:
        if limit is not None and len(items) >= limit:
            break
        if ref.get("split") != split:
            continue
        ann = anns.get(ref["ann_id"])
        if ann is None:
            raise ValueError(
                f"{dataset}: ref {ref.get('ref_id')} points to annotation {ref['ann_id']} not in {instances_path}"
            )
        image_id = ref["image_id"]
        file_name = files.get(image_id) or f"COCO_train2014_{int(image_id):012d}.jpg"
        image = find_image([d / file_name for d in image_dirs], dataset, layout)
        target = _xywh_to_xyxy(ann["bbox"])
        if proposals == "gt":
            boxes = [_xywh_to_xyxy(a["bbox"]) for a in anns_by_image[image_id]]
            answer = next((i for i, a in enumerate(anns_by_image[image_id]) if a["id"] == ref["ann_id"]), None)
        else:
            boxes = list(dets.get(image_id, [])) if dets is not None else []
            answer = _best_index(boxes, target)
        for sent in ref.get("sentences", []):
            if limit is not None and len(items) >= limit:
                return items
            meta = {"split": split, "dataset": dataset, "ref_id": ref["ref_id"], "ann_id": ref["ann_id"]}
            meta.update(image_id=image_id, sent_id=sent.get("sent_id"), category_id=ref.get("category_id"))
            items.append(
                Item(
                    id=f"{split}/{ref['ref_id']}_{sent.get('sent_id')}",
                    task="refexp",
                    image=str(image),
                    prompt=sent.get("sent") or sent.get("raw", ""),
                    proposals=boxes,
                    target=target,
                    answer=answer,
                    meta=meta,
                )
            )
    return items


def _benchmark(dataset: str) -> Benchmark:
    return Benchmark(
        name=dataset,
        loader=partial(load, dataset=dataset),
        splits=DATASETS[dataset][1],
        metrics={"refexp": ("acc@0.5",)},
        default_split="val",
        reference="Yu et al. 2016 / Mao et al. 2016; github.com/lichengunc/refer",
    )


REFCOCO = _benchmark("refcoco")
REFCOCO_PLUS = _benchmark("refcoco+")
REFCOCOG = _benchmark("refcocog")
