"""The one item schema every benchmark loader produces and the toy tasks write as JSONL.

Loaders turn an official file layout (What'sUp JSON, SugarCrepe splits, SeeTRUE CSV, ...) into `Item`s; the toy
world writes `Item`s directly, so the same runner evaluates both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

Box = tuple[float, float, float, float]

TASKS = ("caption", "vqa", "region_vqa", "choice", "match", "refexp")
# Tasks whose prompt is the item's own text (a question, a caption to match, an expression): it cannot be empty.
_TEXT_TASKS = ("vqa", "region_vqa", "match", "refexp")


def check_box(box: object, what: str) -> Box:
    """`box` as `(x0, y0, x1, y1)` floats if it is a valid pixel box by the rules of `vcontrast.regions` (4 finite
    numbers, `x0 <= x1`, `y0 <= y1`, non-zero area), else a `ValueError` starting with `what` (e.g. "Item 'q7':
    `regions[0]`", followed by "box [...] is ..."). An inverted box is often COCO's `[x, y, w, h]` given where
    `[x0, y0, x1, y1]` is expected (it then scores IoU 0 silently), and the message says so.

    Examples:

    ```python
    >>> check_box([10, 20, 30, 40], "`target`")
    (10.0, 20.0, 30.0, 40.0)
    >>> check_box([100, 120, 30, 40], "`target`")
    Traceback (most recent call last):
    ...
    ValueError: `target` box [100, 120, 30, 40] is inverted: ... is it COCO's [x, y, w, h]?
    ```
    """
    from vcontrast.regions import _check_box  # the library's one set of box rules (numpy and PIL only)

    try:
        return tuple(float(v) for v in _check_box(box))
    except ValueError as e:
        hint = ""
        try:
            x0, y0, x1, y1 = (float(v) for v in box)  # type: ignore[union-attr]
            if x1 < x0 or y1 < y0:
                hint = "; [x0, y0, x1, y1] expected: is it COCO's [x, y, w, h]?"
        except (TypeError, ValueError):
            pass
        raise ValueError(f"{what} {e}{hint}".strip()) from None


@dataclass
class Item:
    """One evaluation or training example.

    Args:
        id (`str`): unique within its benchmark split.
        task (`str`): one of `TASKS`: "caption", "vqa" (open answer), "region_vqa" (open answer about a region),
            "choice" (pick one of `candidates`), "match" (image-text agreement, `label` 1/0), "refexp" (pick the
            proposal that the `prompt` refers to).
        image (`str`): image path, relative to the JSONL file's folder or absolute.
        prompt (`str`): the question, instruction, caption to match, or referring expression.
        candidates (`list[str]`, *optional*): answer options for "choice" items (full texts to score).
        answer (`str | int | None`): gold answer text ("vqa", "region_vqa", "caption") or gold index into
            `candidates` ("choice") or into `proposals` ("refexp").
        label (`int | None`): 1 if the text matches the image, 0 if not ("match").
        regions (`list[Box]`): xyxy pixel boxes of the key regions (what CRG blacks out); empty if unknown.
        proposals (`list[Box]`): candidate boxes for "refexp".
        target (`Box | None`): gold box for "refexp" (acc@0.5 IoU is measured against it).
        meta (`dict`): anything else (split name, group id for pair/set metrics, the bias a toy item carries).
    """

    id: str
    task: str
    image: str
    prompt: str
    candidates: list[str] = field(default_factory=list)
    answer: str | int | None = None
    label: int | None = None
    regions: list[Box] = field(default_factory=list)
    proposals: list[Box] = field(default_factory=list)
    target: Box | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Item {self.id!r}: `task` (={self.task!r}) must be one of {TASKS}")
        if not isinstance(self.image, str) or not self.image:
            raise ValueError(f"Item {self.id!r}: `image` (={self.image!r}) must be a non-empty path string")
        if not isinstance(self.prompt, str) or (self.task in _TEXT_TASKS and not self.prompt.strip()):
            raise ValueError(f"Item {self.id!r}: `prompt` (={self.prompt!r}) must be a non-empty string")
        for name in ("regions", "proposals"):
            boxes = getattr(self, name)
            flat = isinstance(boxes, (list, tuple)) and any(isinstance(b, (int, float)) for b in boxes)
            if flat or isinstance(boxes, (str, bytes)) or not isinstance(boxes, (list, tuple)):
                raise ValueError(f"Item {self.id!r}: `{name}` (={boxes!r}) must be a list of [x0, y0, x1, y1] boxes")
            setattr(self, name, [check_box(b, f"Item {self.id!r}: `{name}[{k}]`") for k, b in enumerate(boxes)])
        if self.target is not None:
            self.target = check_box(self.target, f"Item {self.id!r}: `target`")

    def to_json(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> Item:
        """Build an item from a dict, rejecting unknown and missing keys so typos in hand-written files are caught."""
        if not isinstance(data, dict):
            raise ValueError(f"an item has to be a JSON object, got {data!r}")  # noqa: TRY004 (one error type)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Item {data.get('id')!r}: unknown keys {sorted(unknown)}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"Item {data.get('id')!r}: missing keys {missing}")
        return cls(**data)


def read_items(path: str | Path) -> Iterator[Item]:
    """Yield the items of a JSONL file; image paths are resolved against the file's folder.

    Raises:
        `ValueError`: naming the file and line: invalid JSON, unknown or missing keys, a bad field, or an `image`
            file that does not exist.
    """
    from vcontrast.bench.fingerprint import note_read

    path = Path(path)
    note_read(path)
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = Item.from_json(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from e
            if not Path(item.image).is_absolute():
                item.image = str(path.parent / item.image)
            if not Path(item.image).is_file():
                raise ValueError(f"{path}:{lineno}: item {item.id!r}: `image` file {item.image} does not exist")
            yield item


def write_items(items: Iterable[Item], path: str | Path) -> int:
    """Write items as JSONL (one object a line); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w") as f:
        for item in items:
            f.write(json.dumps(item.to_json()) + "\n")
            n += 1
    return n
