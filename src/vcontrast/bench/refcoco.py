"""RefCOCO, RefCOCO+ and RefCOCOg: referring-expression comprehension as proposal re-ranking.

Format source: the datasets of Kazemzadeh et al. 2014 / Yu et al. 2016 (RefCOCO, RefCOCO+, UNC splits) and Mao et al.
2016 (RefCOCOg, Google split; UMD split by Nagaraja et al. 2016) as distributed with the `lichengunc/refer` API: per
dataset a COCO-format `instances.json` (`images` with `file_name`, `annotations` with `bbox` = [x, y, w, h]) and a
pickled `refs(<splitBy>).p`, a list of `{ref_id, ann_id, image_id, split, category_id, file_name, sent_ids,
sentences: [{sent_id, sent, raw, tokens}]}`. The pickles are read as released, with a restricted unpickler that
admits only plain containers, strings and numbers (what refer's files hold) and refuses any other object; a JSON file
with the same content (`refs(<splitBy>).json`) is read too.

Layout A (refer's `data/` folder; `data_dir` may also be the dataset folder itself):

```
data_dir/
  refcoco/instances.json   refcoco/refs(unc).p  refcoco/refs(google).p    unc: train, val, testA, testB; google: train,
                                                                           val, test
  refcoco+/instances.json  refcoco+/refs(unc).p                           train, val, testA, testB
  refcocog/instances.json  refcocog/refs(umd).p refcocog/refs(google).p   umd: train, val, test; google: train, val
  images/mscoco/images/train2014/COCO_train2014_*.jpg   (or images/train2014/, train2014/, or `image_root`)
```

`split_by` picks the refs file (default: unc for RefCOCO and RefCOCO+, umd for RefCOCOg).

Layout B (anything else a user can produce, e.g. from a Hugging Face copy): `data_dir/<split>.jsonl` (or
`data_dir/<dataset>/<split>.jsonl`), one object a line:
`{"image": path relative to the file, "expression": str, "target": [x0, y0, x1, y1],
"proposals": [[x0, y0, x1, y1], ...] (optional), "id": str (optional)}`. Layout B wins when its file exists.

Proposals (`proposals=`, `--proposals`): "gt" (default) = the COCO annotation boxes of the image (the ground-truth
proposal setting), `None` = empty (the region proposer fills them), or a path to detections, matched to the refs by
image id: MAttNet's files (e.g. `res101_coco_minus_refer_notime_dets.json`, a JSON list of `{det_id, box: [x, y, w, h],
image_id, category_id, score}`) or the COCO results format (a list of `{image_id, category_id, bbox: [x, y, w, h],
score}`). The CRG paper re-ranks detector proposals. Layout B items keep the proposals of their own file.

Items: one per (ref, sentence), task "refexp", ids `"<split>/<ref_id>_<sent_id>"`, `prompt` = the expression,
`target` = the referred box (xyxy), `proposals` xyxy, `answer` = index of the proposal with the highest IoU with the
target if that IoU is >= 0.5, else `None`. `split=None` loads "val".

Metrics: acc@0.5 (IoU(chosen proposal, target) >= 0.5, as the paper reports it), and two rows for reading it:
oracle@0.5 (some proposal reaches IoU 0.5: the ceiling of re-ranking) and random@0.5 (the expected acc@0.5 of a
uniformly random proposal).
"""

from __future__ import annotations

import io
import pickle
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vcontrast.bench.fingerprint import note_read
from vcontrast.bench.items import Box, Item
from vcontrast.bench.metrics import IOU_THRESHOLD, box_iou
from vcontrast.bench.registry import (
    Benchmark,
    check_limit,
    find_image,
    read_json,
    read_jsonl_rows,
    require_box,
    require_dir,
    require_file,
    require_text,
    row_error,
    select_splits,
)

SPLIT_BYS: dict[str, dict[str, tuple[str, ...]]] = {
    # dataset folder -> split_by -> splits (the first split_by is the default)
    "refcoco": {"unc": ("train", "val", "testA", "testB"), "google": ("train", "val", "test")},
    "refcoco+": {"unc": ("train", "val", "testA", "testB")},
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
}
_IMAGE_DIRS = ("images/mscoco/images/train2014", "images/train2014", "train2014", "images")
_PLAIN = "plain lists, dicts, strings and numbers"


def _layout(dataset: str, split_by: str) -> str:
    return (
        f"  <data_dir>/{dataset}/instances.json + <data_dir>/{dataset}/refs({split_by}).p (or .json)\n"
        "  <data_dir>/images/mscoco/images/train2014/ (or images/train2014/, train2014/, or --image-root)\n"
        "or <data_dir>/<split>.jsonl with {image, expression, target, proposals?} per line"
    )


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings and numbers only: any class or function reference is refused, so a
    downloaded file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it references {module}.{name}; only {_PLAIN} are read")


def read_plain_pickle(path: Path, benchmark: str) -> Any:
    """Read a pickle that holds only plain data (refer's `refs(*).p`), refusing any object reference.

    Python 2 byte strings (refer's pickles were written by Python 2) are decoded as UTF-8, else as Latin-1.

    Raises:
        `ValueError`: the file is not a pickle, or it references a class or function (which would run code).
    """
    note_read(path)
    data = path.read_bytes()
    for encoding in ("utf-8", "latin1"):
        try:
            return _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
            raise ValueError(f"{benchmark}: {path} is not a plain-data pickle ({e}); refusing to read it") from e
    raise ValueError(f"{benchmark}: {path} holds strings that are neither UTF-8 nor Latin-1")


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
        where = f"line {lineno}"
        image = Path(require_text(row["image"], "refcoco", path, where, "image"))
        image = image if image.is_absolute() else path.parent / image
        find_image([image], "refcoco", "<split>.jsonl rows name images relative to the file", (path, where, "image"))
        prompt = require_text(row["expression"], "refcoco", path, where, "expression")
        target = tuple(require_box(row["target"], "refcoco", path, where, "target", "[x0, y0, x1, y1]"))
        raw = row.get("proposals", [])
        if not isinstance(raw, list):
            raise row_error("refcoco", path, where, "proposals", f"(={raw!r}) must be a list of [x0, y0, x1, y1]")
        proposals = [
            tuple(require_box(b, "refcoco", path, where, f"proposals[{k}]", "[x0, y0, x1, y1]"))
            for k, b in enumerate(raw)
        ]
        items.append(
            Item(
                id=f"{split}/{row.get('id', lineno)}",
                task="refexp",
                image=str(image),
                prompt=prompt,
                proposals=proposals,
                target=target,
                answer=_best_index(proposals, target),
                meta={"split": split},
            )
        )
    return items


def read_detections(path: str | Path, benchmark: str = "refcoco") -> dict[int, list[Box]]:
    """Read detections (MAttNet's `{det_id, box, image_id, ...}` or COCO results' `{image_id, bbox, ...}`, boxes
    [x, y, w, h]) into `image_id -> [xyxy boxes]`, in file order.

    Raises:
        `ValueError`: a missing file, or an entry without an integer `image_id` or a 4-number `box`/`bbox`, naming
            the entry.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{benchmark}: proposals file {str(path)!r} does not exist; --proposals takes 'gt', 'proposer' or a "
            "detections JSON (MAttNet or COCO results format)"
        )
    shape = "a list of detections {image_id, box or bbox: [x, y, w, h]}"
    dets = read_json(path, benchmark, expect=list, shape=shape)
    by_image: dict[int, list[Box]] = defaultdict(list)
    for k, d in enumerate(dets):
        where = f"entry {k}"
        if not isinstance(d, dict):
            raise row_error(benchmark, path, where, None, f"must be a detection {{image_id, box or bbox}}, got {d!r}")
        field = "box" if "box" in d else "bbox"
        if field not in d:
            raise row_error(benchmark, path, where, "box", "(MAttNet) or `bbox` (COCO results) is missing")
        box = require_box(d[field], benchmark, path, where, field)
        image_id = d.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise row_error(benchmark, path, where, "image_id", f"(={image_id!r}) must be an integer")
        by_image[image_id].append(_xywh_to_xyxy(box))
    return by_image


def _refs_path(folder: Path, split_by: str, dataset: str, layout: str) -> Path:
    for suffix in (".p", ".json"):
        path = folder / f"refs({split_by}){suffix}"
        if path.is_file():
            return path
    found = sorted(p.name for p in folder.glob("refs(*)*")) if folder.is_dir() else []
    raise ValueError(
        f"{dataset}: missing file {folder / f'refs({split_by}).p'} (split_by {split_by!r}; found {found or 'none'}). "
        f"Expected layout:\n{layout}"
    )


def _annotations(instances: dict, path: Path, dataset: str) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    """`ann_id -> annotation` and `image_id -> annotations`, each checked (row = `annotations[j]`)."""
    anns_list = instances.get("annotations")
    if not isinstance(anns_list, list):
        raise row_error(dataset, path, "top level", "annotations", "is missing; expected a COCO instances.json")
    anns: dict[int, dict] = {}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for j, a in enumerate(anns_list):
        where = f"annotations[{j}]"
        if not isinstance(a, dict):
            raise row_error(dataset, path, where, None, "must be an object {id, image_id, bbox}")
        for field in ("id", "image_id"):
            if not isinstance(a.get(field), int) or isinstance(a.get(field), bool):
                raise row_error(dataset, path, where, field, f"(={a.get(field)!r}) must be an integer")
        if "bbox" not in a:
            raise row_error(dataset, path, where, "bbox", "is missing (COCO [x, y, w, h])")
        box = require_box(a["bbox"], dataset, path, where, "bbox")
        a = {**a, "bbox": box}
        anns[a["id"]] = a
        by_image[a["image_id"]].append(a)
    return anns, by_image


def _image_files(instances: dict, path: Path, dataset: str) -> dict[int, str]:
    files = {}
    for j, im in enumerate(instances.get("images", [])):
        where = f"images[{j}]"
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            raise row_error(dataset, path, where, "id", "must be an integer in an object {id, file_name}")
        files[im["id"]] = require_text(im.get("file_name"), dataset, path, where, "file_name")
    return files


def _check_ref(ref: object, path: Path, where: str, anns: dict, dataset: str, instances_path: Path) -> dict:
    if not isinstance(ref, dict):
        raise row_error(dataset, path, where, None, "must be a ref {ref_id, ann_id, image_id, split, sentences}")
    for field in ("ref_id", "ann_id", "image_id"):
        if field not in ref:
            raise row_error(dataset, path, where, field, "is missing")
        if not isinstance(ref[field], int) or isinstance(ref[field], bool):
            raise row_error(dataset, path, where, field, f"(={ref[field]!r}) must be an integer")
    if ref["ann_id"] not in anns:
        raise row_error(dataset, path, where, "ann_id", f"(={ref['ann_id']}) is not an annotation of {instances_path}")
    sentences = ref.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise row_error(dataset, path, where, "sentences", "must be a non-empty list of {sent_id, sent}")
    for k, sent in enumerate(sentences):
        text = sent.get("sent") or sent.get("raw") if isinstance(sent, dict) else None
        require_text(text, dataset, path, where, f"sentences[{k}].sent")
        if "sent_id" not in sent:
            raise row_error(dataset, path, where, f"sentences[{k}].sent_id", "is missing")
    return ref


def load(
    data_dir: str | Path,
    split: str | None = None,
    limit: int | None = None,
    *,
    dataset: str = "refcoco",
    split_by: str | None = None,
    proposals: str | Path | None = "gt",
    image_root: str | Path | None = None,
) -> list[Item]:
    """Load RefCOCO / RefCOCO+ / RefCOCOg referring expressions (see the module docstring for both layouts).

    Args:
        data_dir (`str` or `Path`): refer's `data/` folder, the dataset folder, or a folder of `<split>.jsonl`.
        split (`str`, *optional*, defaults to "val"): a split of `dataset` under `split_by` (`SPLIT_BYS`).
        limit (`int`, *optional*): keep the first `limit` expressions.
        dataset (`str`, *optional*, defaults to "refcoco"): "refcoco", "refcoco+" or "refcocog".
        split_by (`str`, *optional*): refer's splitBy, which refs file to read: "unc" or "google" (RefCOCO),
            "unc" (RefCOCO+), "umd" or "google" (RefCOCOg); default the first of these.
        proposals (`str`, `Path` or `None`, *optional*, defaults to "gt"): "gt" for the image's COCO boxes, a path to
            detections (MAttNet or COCO results format), or `None` for no proposals (the proposer's).
        image_root (`str` or `Path`, *optional*): folder of the COCO train2014 images, looked up first.

    Returns:
        `list[Item]`: "refexp" items, ids `"<split>/<ref_id>_<sent_id>"`.

    Examples:

    ```python
    >>> items = load("refer/data", split="testA", dataset="refcoco", proposals="dets.json", limit=5)  # doctest: +SKIP
    >>> items[0].prompt, items[0].target, len(items[0].proposals)  # doctest: +SKIP
    ('man in red', (103.9, 300.0, 238.2, 477.4), 7)
    ```
    """
    if dataset not in SPLIT_BYS:
        raise ValueError(f"`dataset` (={dataset!r}) must be one of {sorted(SPLIT_BYS)}")
    check_limit(limit)
    split_by = split_by or next(iter(SPLIT_BYS[dataset]))
    if split_by not in SPLIT_BYS[dataset]:
        raise ValueError(f"{dataset}: `split_by` (={split_by!r}) must be one of {', '.join(SPLIT_BYS[dataset])}")
    layout = _layout(dataset, split_by)
    root = require_dir(data_dir, dataset, layout)
    split = select_splits(split or "val", SPLIT_BYS[dataset][split_by], f"{dataset} ({split_by})")[0]
    dets = read_detections(proposals, dataset) if proposals not in ("gt", None) else None

    for folder in (root / dataset, root):
        if (folder / f"{split}.jsonl").is_file():
            return _load_jsonl(folder / f"{split}.jsonl", split, limit)

    folder = root / dataset if (root / dataset).is_dir() else root
    refs_path = _refs_path(folder, split_by, dataset, layout)
    instances_path = require_file(folder / "instances.json", dataset, layout)
    shape = "a list of refs"
    refs = read_plain_pickle(refs_path, dataset) if refs_path.suffix == ".p" else read_json(refs_path, dataset)
    if not isinstance(refs, list):
        raise ValueError(f"{dataset}: {refs_path} must hold {shape}, got {type(refs).__name__}")  # noqa: TRY004
    instances = read_json(instances_path, dataset, expect=dict, shape="a COCO instances object")
    anns, anns_by_image = _annotations(instances, instances_path, dataset)
    files = _image_files(instances, instances_path, dataset)
    image_dirs = [base / d for base in dict.fromkeys((root, folder.parent)) for d in _IMAGE_DIRS]
    if image_root is not None:
        image_dirs.insert(0, require_dir(image_root, dataset, "  image_root: the folder of COCO train2014 images"))
    source = "gt" if proposals == "gt" else ("proposer" if proposals is None else str(proposals))

    items: list[Item] = []
    undetected: dict[int, None] = {}  # image ids the detections file has no entry for (ordered set)
    for i, ref in enumerate(refs):
        if limit is not None and len(items) >= limit:
            break
        where = f"entry {i}"
        if not isinstance(ref, dict) or not isinstance(ref.get("split"), str):
            raise row_error(dataset, refs_path, where, "split", "is missing; a ref is {ref_id, ann_id, split, ...}")
        if ref["split"] != split:
            continue
        _check_ref(ref, refs_path, where, anns, dataset, instances_path)
        image_id = ref["image_id"]
        file_name = files.get(image_id) or f"COCO_train2014_{image_id:012d}.jpg"
        image = find_image([d / file_name for d in image_dirs], dataset, layout, (refs_path, where, "image_id"))
        target = _xywh_to_xyxy(anns[ref["ann_id"]]["bbox"])
        if proposals == "gt":
            boxes = [_xywh_to_xyxy(a["bbox"]) for a in anns_by_image[image_id]]
            answer = next((k for k, a in enumerate(anns_by_image[image_id]) if a["id"] == ref["ann_id"]), None)
        else:
            if dets is not None and image_id not in dets:
                undetected[image_id] = None
            boxes = list(dets.get(image_id, [])) if dets is not None else []
            answer = _best_index(boxes, target)
        for sent in ref["sentences"]:
            if limit is not None and len(items) >= limit:
                break
            meta = {"split": split, "dataset": dataset, "split_by": split_by, "proposals": source}
            meta.update(ref_id=ref["ref_id"], ann_id=ref["ann_id"], image_id=image_id, sent_id=sent["sent_id"])
            meta["category_id"] = ref.get("category_id")
            items.append(
                Item(
                    id=f"{split}/{ref['ref_id']}_{sent['sent_id']}",
                    task="refexp",
                    image=str(image),
                    prompt=sent.get("sent") or sent["raw"],
                    proposals=boxes,
                    target=target,
                    answer=answer,
                    meta=meta,
                )
            )
    if undetected:
        # Without this check those items silently took the region proposer's boxes (or the whole image) instead.
        n_images = len({item.meta["image_id"] for item in items})
        shown = ", ".join(map(str, list(undetected)[:5])) + (", ..." if len(undetected) > 5 else "")
        raise ValueError(
            f"{dataset}: the detections file {proposals} has no detection for {len(undetected)} of the {n_images} "
            f"images of split {split!r} (image ids {shown}); give a file that covers every image of the split (e.g. "
            "MAttNet's detections for this dataset), or --proposals gt / proposer"
        )
    return items


def _benchmark(dataset: str) -> Benchmark:
    return Benchmark(
        name=dataset,
        loader=partial(load, dataset=dataset),
        splits=tuple(dict.fromkeys(s for splits in SPLIT_BYS[dataset].values() for s in splits)),
        metrics={"refexp": ("acc@0.5", "oracle@0.5", "random@0.5")},
        default_split="val",
        options=("split_by", "proposals", "image_root"),
        reference="Yu et al. 2016 / Mao et al. 2016; github.com/lichengunc/refer",
    )


REFCOCO = _benchmark("refcoco")
REFCOCO_PLUS = _benchmark("refcoco+")
REFCOCOG = _benchmark("refcocog")
