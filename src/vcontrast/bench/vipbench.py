"""ViP-Bench (Cai et al., CVPR 2024): questions about regions marked by visual prompts, graded by GPT-4.

Format source: the paper "ViP-LLaVA: Making Large Multimodal Models Understand Arbitrary Visual Prompts", its
Hugging Face dataset `mucai/ViP-Bench` and repository `mu-cai/ViP-LLaVA` (`docs/Evaluation.md`,
`scripts/eval/vipbench.sh`, `scripts/convert_vipbench_for_eval.py`, `scripts/eval/vip-bench_evaluator.py`).
Expected layout under `data_dir` (the dataset repository as downloaded):

```
data_dir/
  vip-bench-meta-data.json   {"v1_0": {"image": "v1_1_0.png", "image_source": "v1_1.png", "question": "... <obj> ...",
                                       "answer": "0.75<OR>x=0.75", "capability": ["ocr", "math"]}, ...}
  bbox/questions.jsonl       {"question_id": 0, "image": "v1_1_0.png", "text": question naming the drawn box, ...}
  bbox/images/v1_1_0.png     image with the visual prompt (a box) drawn on it
  human/questions.jsonl      same, with human-drawn prompts (arrows, scribbles, ...)
  human/images/
  source_image/v1_1.png      plain image + LabelMe JSON v1_1.json: {"shapes": [{"label": "obj", "points": [...],
                             "shape_type": "rectangle" | "polygon"}], "imageWidth": ..., "imageHeight": ...}
```

A question line `question_id` belongs to the meta entry `v1_<question_id>`. Splits: `bbox`, `human`; `split=None`
loads both (ids are prefixed by the split). `limit` applies per split.

Items: task "region_vqa", `image` = the split's image with the drawn prompt (the official input), `prompt` = the
`questions.jsonl` text, `answer` = the meta answer (`<AND>` / `<OR>` kept for the grader), `regions` = the xyxy
bounding boxes of the LabelMe shapes named in the meta question (`<obj>`, `<obj1>`, ...), from `source_image/`
(boxes are in the source image's pixel frame, which the drawn images share). `regions` is empty when no annotation
is found. `meta` holds `grader_key` ("v1_<id>"), `capability`, `question_id`, the `<obj>` question and the source
image path.

Metrics: none here. The official grader is GPT-4 (`vip-bench_evaluator.py`, also the evaluation server
`huggingface.co/spaces/mucai/ViP-Bench_Evaluator`); `write_vipbench_predictions` writes the file it reads:
`results/<model>-<split>.json` = `{"v1_<question_id>": "<answer text>", ...}`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from vcontrast.bench.items import Box, Item
from vcontrast.bench.registry import (
    Benchmark,
    check_limit,
    find_image,
    read_json,
    read_jsonl_rows,
    require_dir,
    require_file,
    require_text,
    row_error,
    select_splits,
)

logger = logging.getLogger(__name__)

META_NAME = "vip-bench-meta-data.json"
SPLITS = ("bbox", "human")
_LAYOUT = (
    "  <data_dir>/vip-bench-meta-data.json\n"
    "  <data_dir>/{bbox,human}/questions.jsonl and {bbox,human}/images/\n"
    "  <data_dir>/source_image/<image_source> + <stem>.json   (LabelMe boxes; optional)\n"
    "from huggingface.co/datasets/mucai/ViP-Bench"
)
_OBJ = re.compile(r"<(obj\d*)>")


def _shape_box(shape: object, path: Path, row: str) -> Box | None:
    # LabelMe rectangles are two corner points; polygons take their bounding box. Other shape types (points, lines,
    # circles) mark no region and are skipped; malformed points are an error naming the shape.
    if not isinstance(shape, dict):
        raise row_error("vipbench", path, row, None, "must be a LabelMe shape object {label, points, shape_type}")
    if shape.get("shape_type", "polygon") not in ("rectangle", "polygon"):
        return None
    points = shape.get("points")
    ok = isinstance(points, list) and len(points) >= 2
    ok = ok and all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
        for p in points
    )
    if not ok:
        raise row_error("vipbench", path, row, "points", f"(={points!r}) must be two or more [x, y] number pairs")
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _regions(root: Path, entry: dict) -> list[Box]:
    source = entry.get("image_source")
    if not source:
        return []
    path = root / "source_image" / f"{Path(source).stem}.json"
    if not path.is_file():
        return []
    shapes = read_json(path, "vipbench", expect=dict, shape="a LabelMe object with `shapes`").get("shapes", [])
    if not isinstance(shapes, list):
        raise row_error("vipbench", path, "top level", "shapes", "must be a list of LabelMe shapes")
    labels = _OBJ.findall(entry.get("question", "")) or ["obj"]
    boxes = []
    for label in dict.fromkeys(labels):
        for i, shape in enumerate(shapes):
            box = _shape_box(shape, path, f"shapes[{i}]")
            if shape.get("label") == label and box is not None:
                boxes.append(box)
                break
    return boxes


def _read_questions(path: Path) -> list[tuple[int, dict]]:
    shape = "question_id, image and text"
    rows = list(read_jsonl_rows(path, "vipbench", ("question_id", "image", "text"), shape))
    for lineno, row in rows:
        require_text(row["text"], "vipbench", path, f"line {lineno}", "text")
        require_text(row["image"], "vipbench", path, f"line {lineno}", "image")
    return rows


def _check_entry(entry: object, path: Path, key: str) -> dict:
    row = f"key {key!r}"
    if not isinstance(entry, dict):
        raise row_error("vipbench", path, row, None, "must be an object {image, image_source, question, answer, ...}")
    require_text(entry.get("answer"), "vipbench", path, row, "answer")
    require_text(entry.get("question"), "vipbench", path, row, "question")
    capability = entry.get("capability", [])
    if not (isinstance(capability, list) and all(isinstance(c, str) for c in capability)):
        raise row_error("vipbench", path, row, "capability", f"(={capability!r}) must be a list of strings")
    if entry.get("image_source") is not None:
        require_text(entry["image_source"], "vipbench", path, row, "image_source")
    return entry


def load(data_dir: str | Path, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Load ViP-Bench (see the module docstring for the layout).

    Args:
        data_dir (`str` or `Path`): the downloaded `mucai/ViP-Bench` folder.
        split (`str`, *optional*): "bbox" or "human"; `None` loads both.
        limit (`int`, *optional*): keep the first `limit` questions of each split.

    Returns:
        `list[Item]`: "region_vqa" items, ids `"<split>/v1_<question_id>"`.

    Examples:

    ```python
    >>> items = load("ViP-Bench", split="bbox", limit=2)  # doctest: +SKIP
    >>> items[0].meta["grader_key"], items[0].regions  # doctest: +SKIP
    ('v1_0', [(112.0, 40.0, 380.0, 96.0)])
    ```
    """
    check_limit(limit)
    root = require_dir(data_dir, "vipbench", _LAYOUT)
    meta_path = require_file(root / META_NAME, "vipbench", _LAYOUT)
    meta = read_json(meta_path, "vipbench", expect=dict, shape="an object {'v1_<id>': {question, answer, ...}}")
    items = []
    for name in select_splits(split, SPLITS, "vipbench"):
        questions_path = require_file(root / name / "questions.jsonl", "vipbench", _LAYOUT)
        for lineno, row in _read_questions(questions_path)[:limit]:
            key = f"v1_{row['question_id']}"
            if key not in meta:
                raise row_error(
                    "vipbench", questions_path, f"line {lineno}", "question_id", f"({key!r}) is not in {meta_path}"
                )
            entry = _check_entry(meta[key], meta_path, key)
            source = (questions_path, f"line {lineno}", "image")
            image = find_image([root / name / "images" / row["image"]], "vipbench", _LAYOUT, source)
            items.append(
                Item(
                    id=f"{name}/{key}",
                    task="region_vqa",
                    image=str(image),
                    prompt=row["text"],
                    answer=entry.get("answer"),
                    regions=_regions(root, entry),
                    meta={
                        "split": name,
                        "grader_key": key,
                        "question_id": row["question_id"],
                        "capability": list(entry.get("capability", [])),
                        "obj_question": entry.get("question"),
                        "source_image": str(root / "source_image" / entry["image_source"])
                        if entry.get("image_source")
                        else None,
                    },
                )
            )
    return items


def write_vipbench_predictions(items: Iterable[Item], predictions: Mapping[str, dict | str], path: str | Path) -> Path:
    """Write answers in the file format of the official ViP-Bench grader.

    The grader (`scripts/eval/vip-bench_evaluator.py` in `mu-cai/ViP-LLaVA`, and the evaluation server) reads
    `results/<model>-<split>.json`, a JSON object `{"v1_<question_id>": "<answer text>"}`, and looks up every key of
    `vip-bench-meta-data.json`, so submit a full split (one file per split).

    Args:
        items (`Iterable[Item]`): ViP-Bench items of one split.
        predictions (`Mapping[str, dict | str]`): `Item.id -> {"text": answer}` (or the answer string itself).
        path (`str` or `Path`): output file, e.g. `results/llava-1.5-7b-crg-bbox.json`.

    Returns:
        `Path`: the written file.

    Examples:

    ```python
    >>> answers = {item.id: {"text": "a red cup"} for item in items}  # doctest: +SKIP
    >>> write_vipbench_predictions(items, answers, "results/llava-crg-bbox.json")  # doctest: +SKIP
    ```
    """
    items = list(items)
    splits = {item.meta.get("split") for item in items}
    if len(splits) > 1:
        raise ValueError(
            f"write_vipbench_predictions: items span splits {sorted(map(str, splits))}; write one file per split"
        )
    results = {}
    for item in items:
        if "grader_key" not in item.meta:
            raise ValueError(
                f"write_vipbench_predictions: item {item.id!r} is not a ViP-Bench item (no meta grader_key)"
            )
        if item.id not in predictions:
            raise ValueError(f"write_vipbench_predictions: no prediction for item {item.id!r}")
        pred = predictions[item.id]
        text = pred.get("text") if isinstance(pred, dict) else pred
        if not isinstance(text, str):
            # bad input gets a ValueError throughout vcontrast
            msg = f"write_vipbench_predictions: prediction for {item.id!r} must be a string or {{'text': str}}"
            raise ValueError(msg)  # noqa: TRY004
        results[item.meta["grader_key"]] = text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    logger.info("wrote %d ViP-Bench answers to %s", len(results), path)
    return path


VIPBENCH = Benchmark(
    name="vipbench",
    loader=load,
    splits=SPLITS,
    metrics={"region_vqa": ()},
    reference="Cai et al., CVPR 2024; huggingface.co/datasets/mucai/ViP-Bench; github.com/mu-cai/ViP-LLaVA",
)
