"""The eval runner: a benchmark from its official files, a model and a method in; predictions and metrics out.

`evaluate` loads the items (`vcontrast.bench.registry`), runs a method (`vcontrast.bench.methods`: "base" or "crg",
or any `Method`) over them in batches, and writes into `out_dir`:

```
out_dir/
  run.json                   what produced the predictions: benchmark, split, data files (size + SHA-256) and loader
                             options, model (folder + file fingerprints), method and its settings, image backend
  predictions.partR.jsonl    process R's predictions while it runs, one JSON object a line ({"id": ..., ...})
  predictions.jsonl          all predictions once the run is complete (the part files are merged into it)
  metrics.json               the metrics of `vcontrast.bench.metrics.compute_metrics` and the run's description
  vipbench/<tag>-<split>.json   ViP-Bench only: the answers in the file format of the official GPT-4 grader
```

Resuming. Every finished batch is appended to the process's part file in one write, flushed and synced, so a crash
loses at most the batches in flight. A rerun with the same `out_dir` reads every prediction file there and skips the
items that have one; a line torn by a crash is ignored (and cut off before the owner appends again). Batches are
fixed by the item order and `batch_size` alone, and a batch with any item missing runs whole (only the missing items
are written), so a resumed run computes every item in the same batch as an uninterrupted run. `run.json` guards the
folder: a rerun whose benchmark, split, data files, loader options, model, method, settings or image backend differ
raises (naming every difference) instead of mixing predictions; `overwrite=True` deletes the earlier run's files and
starts over.
A larger `limit` reuses the predictions of the smaller run. Every row and image is validated (by the loader) before
the model loads, and every box against its image's size. `run.json` is written once the method has loaded, and a run
that fails before its first prediction removes it again (with the folder, if the run created it), so that the
corrected rerun is not refused as a different run.

Several processes. Launched with `accelerate launch --num_processes N` (or `torchrun --nproc_per_node N`), each
process takes every N-th batch (a strided shard), loads the model on its own device and writes its own part file.
After a barrier, process 0 merges the part files into `predictions.jsonl` and computes the metrics; if a process
died, a rerun (with any number of processes) finishes the missing items and merges.

Examples:

```python
>>> from vcontrast.bench.runner import evaluate
>>> result = evaluate("sugarcrepe", "data/sugarcrepe", model="checkpoints/llava-1.5-7b-hf", method="crg",
...                   proposer="grounding-dino", out_dir="out/sugarcrepe-crg")  # doctest: +SKIP
>>> result["metrics"]  # doctest: +SKIP
{'accuracy': 0.87, 'add_att/accuracy': 0.85, ...}
```
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vcontrast.atomic import write_text
from vcontrast.bench.fingerprint import backfill_model_files, fingerprint_files, model_identity, record_reads
from vcontrast.bench.items import Item
from vcontrast.bench.methods import (
    DEFAULT_ALPHA,
    DEFAULT_PROPOSER,
    Method,
    check_alpha_has_effect,
    get_method,
    method_config,
)
from vcontrast.bench.registry import Benchmark, check_limit, get_benchmark
from vcontrast.regions import open_image

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "RUN_FILE",
    "evaluate",
    "format_table",
    "make_batches",
    "merge_predictions",
    "read_predictions",
]

RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
_PART_GLOB = "predictions.part*.jsonl"


def _part_file(out_dir: Path, rank: int) -> Path:
    return out_dir / f"predictions.part{rank}.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# Prediction files
# ---------------------------------------------------------------------------------------------------------------


def _scan(path: Path) -> tuple[dict[str, dict], int]:
    """Predictions of one JSONL file and the byte length of its intact part (a torn last line is left out)."""
    data = path.read_bytes()
    lines = data.split(b"\n")  # the piece after the last newline is b"" unless a write was cut short
    predictions: dict[str, dict] = {}
    good = start = 0
    for i, line in enumerate(lines):
        end = start + len(line) + (i < len(lines) - 1)
        if line.strip():
            # A crash can only cut the last write short: an unreadable last piece without its newline, or (after a
            # crash that left garbage) an unreadable last line. Anywhere else, an unreadable line is an error. A
            # last line that is a whole JSON object was written whole (no proper prefix of an object is one), only
            # its newline is missing (a file written by hand, or the newline lost): it is kept.
            torn = i == len(lines) - 1 or (i == len(lines) - 2 and not lines[-1])
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if torn:
                    logger.warning(
                        "%s: ignoring a torn last line (%d bytes) left by an interrupted run", path, len(line)
                    )
                    break
                raise ValueError(f"{path}:{i + 1} is not valid JSON ({e}); delete that line or the file") from e
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise ValueError(f"{path}:{i + 1} must be a JSON object with a string `id`, got {line[:80]!r}")
            predictions[row.pop("id")] = row
        good = start = end
    return predictions, good


def read_predictions(path: str | Path) -> dict[str, dict]:
    """Read a predictions JSONL file (`{"id": ..., **prediction}` a line) into `id -> prediction`.

    A torn last line (from a run killed while writing: not a whole JSON object) is ignored; a whole last object
    without its newline is kept; any other invalid line raises `ValueError`. A missing file gives `{}`.

    Args:
        path (`str` or `Path`): e.g. `out_dir / "predictions.jsonl"`.

    Examples:

    ```python
    >>> predictions = read_predictions("out/eval/predictions.jsonl")  # doctest: +SKIP
    >>> predictions["swap_att/0"]  # doctest: +SKIP
    {'scores': [-12.3, -14.0], 'pred_index': 0}
    ```
    """
    path = Path(path)
    return _scan(path)[0] if path.is_file() else {}


def _known_predictions(out_dir: Path) -> dict[str, dict]:
    # The merged file first, then every process's part file (a rerun may use a different number of processes).
    known = read_predictions(out_dir / PREDICTIONS_FILE)
    for part in sorted(out_dir.glob(_PART_GLOB)):
        known.update(read_predictions(part))
    return known


def _repair(path: Path) -> None:
    # Cut a torn last line off before appending, and end a whole last line that lacks its newline, so that the next
    # line starts on a line of its own.
    if path.is_file():
        _, good = _scan(path)
        with path.open("r+b") as f:
            if good < path.stat().st_size:
                f.truncate(good)
            if good > 0:
                f.seek(good - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")


def _append(f: Any, rows: Iterable[dict]) -> None:
    # One write per batch, then flush and fsync: after a crash the file ends in whole batches or a torn last line.
    f.write("".join(json.dumps(row) + "\n" for row in rows))
    f.flush()
    os.fsync(f.fileno())


def merge_predictions(out_dir: str | Path, items: Sequence[Item] | None = None) -> dict[str, dict]:
    """Merge `predictions.jsonl` and every `predictions.part*.jsonl` of `out_dir` into `predictions.jsonl`.

    The merged file lists the predictions of `items` in item order, then any other known prediction (e.g. from an
    earlier run with a larger `limit`) in the order found. It is written atomically, then the part files are removed.

    Args:
        out_dir (`str` or `Path`): the runner's output folder.
        items (`Sequence[Item]`, *optional*): the items whose order the file follows.

    Returns:
        `dict[str, dict]`: every prediction, `id -> prediction`.
    """
    out_dir = Path(out_dir)
    known = _known_predictions(out_dir)
    order = [item.id for item in items or [] if item.id in known]
    order += [key for key in known if key not in set(order)]
    write_text(out_dir / PREDICTIONS_FILE, "".join(json.dumps({"id": key, **known[key]}) + "\n" for key in order))
    for part in out_dir.glob(_PART_GLOB):
        part.unlink()
    return {key: known[key] for key in order}


# ---------------------------------------------------------------------------------------------------------------
# Batches and processes
# ---------------------------------------------------------------------------------------------------------------


def make_batches(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Split items into batches of one task each, at most `batch_size` long, in order of first appearance.

    Batches depend on the items and `batch_size` only, never on the number of processes or on what a previous run
    finished, so every item is computed in the same company (same padding) in every run.

    Examples:

    ```python
    >>> [len(b) for b in make_batches(items, 4)]  # 6 choice items, then 3 match items  # doctest: +SKIP
    [4, 2, 3]
    ```
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` (={batch_size!r}) has to be a positive integer")
    by_task: dict[str, list[Item]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    return [group[i : i + batch_size] for group in by_task.values() for i in range(0, len(group), batch_size)]


class _Processes:
    """Rank, world size, device and barrier: accelerate's `PartialState` when launched on several processes."""

    def __init__(self) -> None:
        self.state = None
        self.rank, self.world_size, self.device = 0, 1, None
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        try:
            import torch
            from accelerate import PartialState
        except ImportError as e:
            if launched:
                raise ValueError(
                    f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate is not installed: "
                    "pip install 'vcontrast[train]' to evaluate on several processes"
                ) from e
            return
        # On a machine without GPUs, `cpu=True` makes PartialState join the launched processes through gloo.
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world_size = self.state.process_index, self.state.num_processes
        self.device = self.state.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None and self.world_size > 1:
            self.state.wait_for_everyone()


# ---------------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------------


def _data_files(paths: list[Path], data_dir: Path) -> dict[str, dict]:
    # Files under data_dir are keyed relative to it, so that a moved copy of the same data resumes.
    root = Path(data_dir).expanduser().resolve()
    fingerprints = fingerprint_files(paths)
    return {
        (str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p): fp for p, fp in fingerprints.items()
    }


def _differences(before: Any, now: Any, key: str = "") -> list[str]:
    """Dotted keys where two run descriptions differ, with both values (short)."""
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(before) | set(now), key=str):
            sub = f"{key}.{k}" if key else str(k)
            if k not in before:
                out.append(f"{sub}: not recorded before, now {_short(now[k])}")
            elif k not in now:
                out.append(f"{sub}: was {_short(before[k])}, now absent")
            else:
                out += _differences(before[k], now[k], sub)
        return out
    return [] if before == now else [f"{key}: was {_short(before)}, now {_short(now)}"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_run(out_dir: Path, run: dict, model: Any = None) -> bool:
    """True if `run.json` is missing (a new run); raises if it describes a different run, naming what differs.
    `model` is what `evaluate` was given: a loaded pair's model config hash as an older vcontrast wrote it counts."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        return True
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun with --overwrite to start over") from e
    from vcontrast.models.identity import backfill_model_config  # lazily: vcontrast.models imports torch
    from vcontrast.models.image_backend import backfill_image_backend

    previous = backfill_image_backend(previous, run, path, "resuming it as a run with")
    if isinstance(model, tuple) and isinstance(previous.get("model"), dict):
        previous["model"] = backfill_model_config(previous["model"], model[0], path, "resuming it with")
    if isinstance(previous.get("model"), dict) and isinstance(run.get("model"), dict):
        previous["model"] = backfill_model_files(previous["model"], run["model"], path, "resuming it with")
    diffs = _differences(previous, run)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ValueError(
            f"`out_dir` (={str(out_dir)!r}) holds predictions of a different run: {shown}. "
            "Use another output folder, or --overwrite (overwrite=True) to delete them and start over."
        )
    return False


def _clear_run(out_dir: Path) -> None:
    """Delete what a run wrote into `out_dir` (only the runner's own files)."""
    import shutil

    for path in [out_dir / RUN_FILE, out_dir / PREDICTIONS_FILE, out_dir / METRICS_FILE, *out_dir.glob(_PART_GLOB)]:
        path.unlink(missing_ok=True)
    if (out_dir / "vipbench").is_dir():
        shutil.rmtree(out_dir / "vipbench")


def _first_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that does not exist yet (what `mkdir(parents=True)` creates)."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def _discard_run(out_dir: Path, part: Path, created: Path | None) -> None:
    """Undo what a run that failed before its first prediction wrote: run.json, its empty part file, and the folders
    it created (only when empty)."""
    if part.is_file() and part.stat().st_size == 0:
        part.unlink()
    (out_dir / RUN_FILE).unlink(missing_ok=True)
    if created is None:
        return
    for path in (out_dir, *out_dir.parents):
        try:
            path.rmdir()
        except OSError:  # not empty (or already gone): leave it
            break
        if path == created:
            break


def _check_images(items: list[Item], benchmark: str) -> None:
    """Every item's image exists and is an image file PIL recognises (its header; decoding happens per batch), so
    that a bad image stops the run before the model loads. Loaders already name the row of a missing image; this
    catches items from any other source and unreadable files."""
    from PIL import Image, UnidentifiedImageError

    missing = [item for item in items if not Path(item.image).is_file()]
    if missing:
        raise ValueError(
            f"{benchmark}: {len(missing)} item(s) name image files that do not exist, e.g. item "
            f"{missing[0].id!r}: {missing[0].image}"
        )
    sizes: dict[str, tuple[int, int]] = {}
    for item in items:
        if item.image not in sizes:  # each file once (RefCOCO has several sentences per image)
            try:
                with Image.open(item.image) as image:
                    sizes[item.image] = image.size
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise ValueError(
                    f"{benchmark}: item {item.id!r}: `image` {item.image} is not a readable image ({e})"
                ) from e
        _check_boxes_inside(item, sizes[item.image], benchmark)


def _check_boxes_inside(item: Item, size: tuple[int, int], benchmark: str) -> None:
    # A box entirely outside its image (e.g. boxes of another image, or of the image before a resize) would fail
    # only once the model has loaded and earlier batches were written; `parse_boxes` holds the library's rule.
    from vcontrast.regions import parse_boxes

    named = [(f"regions[{k}]", b) for k, b in enumerate(item.regions)]
    named += [(f"proposals[{k}]", b) for k, b in enumerate(item.proposals)]
    named += [("target", item.target)] if item.target is not None else []
    try:
        parse_boxes([box for _, box in named], size)  # all at once; one by one only to name a bad one
        return
    except ValueError:
        pass
    for name, box in named:
        try:
            parse_boxes([box], size)
        except ValueError as e:
            raise ValueError(f"{benchmark}: item {item.id!r}: `{name}` {e} ({item.image})") from None


def _open(item: Item) -> Any:
    try:
        return open_image(item.image)
    except ValueError as e:
        raise ValueError(f"item {item.id!r}: {e}") from e


def _build_method(
    method: str | Method,
    model: Any,
    alpha: float,
    proposer: Any,
    proposer_model: str | None,
    max_new_tokens: int,
    device: Any,
    rerank_prompt: str | None = None,
    image_backend: str | None = None,
) -> Method:
    if not isinstance(method, str):
        return method
    if isinstance(model, tuple):
        loaded, processor = model
    else:
        from vcontrast.models.loading import load_model

        on = device if device is not None and device.type != "cpu" else None
        loaded, processor = load_model(model, device=on, image_backend=image_backend)
    return get_method(
        method,
        loaded,
        processor,
        alpha=alpha,
        proposer=proposer,
        proposer_model=proposer_model,
        max_new_tokens=max_new_tokens,
        rerank_prompt=rerank_prompt,
    )


def _image_backend(model: Any, image_backend: str | None) -> str | None:
    """The image backend ("pil" or "torchvision") the run's processor uses, for run.json: the two resize differently,
    so a run resumed where the other is the default must not mix them. Loads only the processor."""
    from vcontrast.models.image_backend import check_image_backend, image_backend_of

    if isinstance(model, tuple):
        got = image_backend_of(model[1])
        if image_backend is not None and got is not None and got != check_image_backend(image_backend):
            raise ValueError(
                f"`image_backend` (={image_backend!r}) differs from the given processor's ({got!r}); it applies to a "
                "model the runner loads"
            )
        return got
    from vcontrast.models.loading import check_model_source, load_processor
    from vcontrast.toy.model import IMAGE_BACKEND, WEIGHTS_DIR

    if model is None:  # the toy model: `vcontrast.toy.load`'s default backend
        return image_backend_of(load_processor(WEIGHTS_DIR, image_backend=image_backend or IMAGE_BACKEND))
    return image_backend_of(load_processor(check_model_source(model), image_backend=image_backend))


def _summary(run: dict, items: list[Item], predictions: dict[str, dict], metrics: dict) -> dict:
    summary = {**run, "n_items": len(items), "metrics": metrics}
    for key in ("regions_source", "proposals_source"):
        counts = Counter(predictions[item.id][key] for item in items if key in predictions[item.id])
        if counts:
            summary[key] = dict(sorted(counts.items()))
    summary["predictions"] = PREDICTIONS_FILE
    return summary


def _write_vipbench(out_dir: Path, run: dict, items: list[Item], predictions: dict[str, dict]) -> list[str]:
    from vcontrast.bench.vipbench import write_vipbench_predictions

    tag = f"{Path(run['model']['name']).name}-{run['method']}" if run["model"] else run["method"]
    files = []
    for split in sorted({str(item.meta.get("split")) for item in items}):
        subset = [item for item in items if str(item.meta.get("split")) == split]
        path = write_vipbench_predictions(subset, predictions, out_dir / "vipbench" / f"{tag}-{split}.json")
        files.append(str(path.relative_to(out_dir)))
    return files


def evaluate(
    benchmark: str | Benchmark,
    data_dir: str | Path,
    model: str | Path | tuple | None = None,
    method: str | Method = "base",
    alpha: float = DEFAULT_ALPHA,
    limit: int | None = None,
    out_dir: str | Path = "out/eval",
    split: str | None = None,
    batch_size: int = 8,
    show_progress: bool = True,
    proposer: Any = DEFAULT_PROPOSER,
    proposer_model: str | None = None,
    max_new_tokens: int = 32,
    *,
    proposals: str | Path | None = None,
    split_by: str | None = None,
    image_root: str | Path | None = None,
    overwrite: bool = False,
    rerank_prompt: str | None = None,
    image_backend: str | None = None,
) -> dict:
    """Evaluate a model on a benchmark, writing predictions as it goes and resuming where an earlier run stopped.

    Args:
        benchmark (`str` or `Benchmark`): a name of `vcontrast.bench.registry.BENCHMARKS` ("whatsup",
            "sugarcrepe", "vipbench", "seetrue", "refcoco", "refcoco+", "refcocog", "toy") or a `Benchmark`.
        data_dir (`str` or `Path`): the benchmark's files in their official layout (see its module docstring).
        model (`str`, `Path`, `tuple` or `None`, *optional*): a checkpoint folder for `load_model`, a
            `(model, processor)` pair, or `None` for the toy model shipped with vcontrast. Unused when `method` is a
            `Method` object.
        method (`str` or `Method`, *optional*, defaults to `"base"`): a built-in method of
            `vcontrast.bench.methods.METHODS` ("base" (the plain model), "crg", "overlay", "crg+overlay", "vcd",
            "no-image"), or an object following the `Method` protocol.
        alpha (`float`, *optional*, defaults to 1.0): CRG's guidance strength (method "crg"). "crg" and
            "crg+overlay" re-rank referring expressions by the alpha-free log-ratio, so a run of refexp items only
            refuses any other value (`check_alpha_has_effect`).
        limit (`int`, *optional*): evaluate the first `limit` items (of each split, as the loader counts).
        out_dir (`str` or `Path`, *optional*, defaults to `"out/eval"`): output folder (see the module docstring);
            one folder per run: rerunning into it resumes.
        split (`str`, *optional*): a split of the benchmark; `None` takes the loader's default.
        batch_size (`int`, *optional*, defaults to 8): items per model call.
        show_progress (`bool`, *optional*, defaults to `True`): show a progress bar (items/s) on process 0.
        proposer (`str`, `RegionProposer` or `None`, *optional*, defaults to `"grounding-dino"`): region proposer
            for items without regions (or refexp items without proposals); `None` blacks out the whole image
            instead. Loaded only when an item needs it.
        proposer_model (`str`, *optional*): checkpoint folder of the proposer (offline use).
        max_new_tokens (`int`, *optional*, defaults to 32): generation length for open-answer tasks.
        proposals (`str` or `Path`, *optional*): RefCOCO/+/g only: "gt" (the default: the image's COCO boxes),
            "proposer" (the region proposer's boxes), or a detections file (MAttNet or COCO results format).
        split_by (`str`, *optional*): RefCOCO/+/g only: refer's splitBy ("unc", "google", "umd").
        image_root (`str` or `Path`, *optional*): SugarCrepe and RefCOCO/+/g: the folder of the COCO images.
        overwrite (`bool`, *optional*, defaults to `False`): delete the predictions of an earlier run in `out_dir`
            and start over, instead of refusing when that run had other inputs.
        rerank_prompt (`str`, *optional*): refexp only: the prompt an expression is scored as the answer to (default
            CRG's "Describe the image."), for a built-in method given by name (set it on a `Method` object instead).
        image_backend (`str`, *optional*): the image processor's backend for a model the runner loads, "pil" or
            "torchvision" (`load_model`); defaults to transformers' choice (torchvision where installed). The
            backend used is recorded in `run.json`: the two resize differently, so a run never resumes on the other.

    Returns:
        `dict`: the content of `metrics.json`: `benchmark`, `split`, `model`, `method`, `config`, `n_items`,
        `metrics` (name -> value), `regions_source` / `proposals_source` (how many predictions took their regions or
        refexp proposals from the item, the proposer or the whole image), `predictions` (file name), for ViP-Bench
        `grader_files`, and `metrics_error` when the metrics could not be computed, or some are undefined on these
        items and left out (e.g. AUROC of one class; the other metrics are still given).

    Raises:
        `ValueError`: bad arguments, a malformed data file (naming the file, the row and the field), a missing image,
            or an `out_dir` holding a run with other inputs. All of these are checked before the model loads.

    Examples:

    ```python
    >>> evaluate("toy", "toy_data", method="crg", alpha=1.0, out_dir="out/toy-crg")["metrics"]  # doctest: +SKIP
    {'choice/accuracy': 0.91, 'match/auroc': 0.88, ...}
    ```
    """
    from tqdm.auto import tqdm

    from vcontrast.bench.metrics import compute_metrics

    spec = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    check_limit(limit)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` (={batch_size!r}) has to be a positive integer")
    if isinstance(method, str):
        config = method_config(method, alpha, proposer, proposer_model, max_new_tokens, rerank_prompt)
        name, model_id = method, model_identity(model)
    elif isinstance(method, Method):
        if rerank_prompt is not None or image_backend is not None:
            given = "rerank_prompt" if rerank_prompt is not None else "image_backend"
            raise ValueError(f"`{given}` is for a method given by name; set it on the Method object instead")
        config, name = dict(method.config), method.name
        model_id = model_identity(model) if model is not None else None
    else:
        raise ValueError(f"`method` (={method!r}) has to be a name of METHODS or a Method object")  # noqa: TRY004
    json.dumps(config)  # a Method's config must be JSON-ready: fail before any work

    options = {"proposals": proposals, "split_by": split_by, "image_root": image_root}
    options = {k: v for k, v in options.items() if v is not None and not (k == "proposals" and v == "gt")}
    # "proposer": items without proposals, which the method then takes from the region proposer
    loader_options = {k: (None if k == "proposals" and v == "proposer" else v) for k, v in options.items()}
    with record_reads() as read_paths:
        items = spec.load(data_dir, split=split, limit=limit, **loader_options)
    if not items:
        raise ValueError(f"{spec.name}: no items in {data_dir} (split={split!r}, limit={limit!r})")
    counts = Counter(item.id for item in items)
    duplicates = [key for key, n in counts.items() if n > 1]
    if duplicates:
        raise ValueError(f"{spec.name}: item ids must be unique, found duplicates {duplicates[:5]}")
    _check_images(items, spec.name)
    if isinstance(method, str):
        check_alpha_has_effect(method, alpha, {item.task for item in items})
    data = {
        "options": {k: str(v) for k, v in options.items() if v is not None},
        "files": _data_files(read_paths, Path(data_dir)),
    }
    backend = _image_backend(model, image_backend) if isinstance(method, str) else None
    run = {"benchmark": spec.name, "split": split, "data": data, "model": model_id, "method": name, "config": config}
    run["image_backend"] = backend

    procs = _Processes()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"`out_dir` (={str(out_dir)!r}) is a file; give a folder for the predictions and metrics")
    created = _first_missing(out_dir)  # the folder this run creates (removed again if it fails before predicting)
    # Every process checks run.json and reads what is done before any process writes (same error on every rank);
    # with `overwrite` the earlier run's files are deleted only once the method has loaded.
    new_run = True if overwrite else _check_run(out_dir, run, model)
    done = set() if overwrite else set(_known_predictions(out_dir)) & set(counts)

    shard = make_batches(items, batch_size)[procs.rank :: procs.world_size]
    todo = [batch for batch in shard if any(item.id not in done for item in batch)]
    n_shard = sum(len(batch) for batch in shard)
    n_done = sum(item.id in done for batch in shard for item in batch)
    if done:
        logger.info("%s: resuming, %d of %d items already predicted", out_dir, len(done), len(items))

    # Load the model before anything is written: a run whose model or method cannot load leaves no run.json behind
    # that would refuse the corrected rerun. Process 0 writes run.json once every process has loaded, and no process
    # writes a prediction before run.json exists.
    runner = None
    if todo:
        runner = _build_method(
            method, model, alpha, proposer, proposer_model, max_new_tokens, procs.device, rerank_prompt, image_backend
        )
    procs.barrier()
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear_run(out_dir)
        if new_run:
            write_text(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")
    procs.barrier()
    part = _part_file(out_dir, procs.rank)
    _repair(part)

    written = 0
    try:
        if runner is not None:
            bar = tqdm(
                total=n_shard,
                initial=n_done,
                unit="item",
                desc=f"{spec.name} {name}",
                disable=not show_progress or not procs.is_main,
                dynamic_ncols=True,
            )
            with part.open("a", encoding="utf-8") as f, bar:
                for batch in todo:
                    images = [_open(item) for item in batch]
                    predictions = runner.predict(batch, images)
                    if len(predictions) != len(batch):
                        raise ValueError(
                            f"method {name!r} returned {len(predictions)} predictions for {len(batch)} items"
                        )
                    rows = [
                        {"id": item.id, **prediction}
                        for item, prediction in zip(batch, predictions, strict=True)
                        if item.id not in done
                    ]
                    _append(f, rows)
                    written += len(rows)
                    bar.update(len(rows))
    except BaseException:
        # A run that fails before its first prediction (e.g. a region proposer that cannot load, which happens at the
        # first item that needs it) leaves nothing behind on one process. With several, another process may have
        # written predictions under this run.json, so it stays.
        if procs.world_size == 1 and new_run and not done and not written:
            _discard_run(out_dir, part, created)
        raise

    procs.barrier()
    if procs.is_main:
        merged = merge_predictions(out_dir, items)
        missing = [item.id for item in items if item.id not in merged]
        if missing:
            raise ValueError(f"{len(missing)} items have no prediction after the run (e.g. {missing[:5]}); rerun")
        undefined: dict[str, str] = {}
        try:
            metrics, error = compute_metrics(spec, items, merged, undefined=undefined), None
        except ValueError as e:
            # The predictions are safe on disk; say why there is no number instead of losing the summary.
            logger.warning("%s: metrics could not be computed: %s", spec.name, e)
            metrics, error = {}, str(e)
        if error is None and undefined:
            # Only the undefined entries are left out (e.g. match/auroc of a --limit holding one class).
            error = "; ".join(f"{key} is undefined: {why}" for key, why in undefined.items())
        summary = _summary(run, items, merged, metrics)
        if error is not None:
            summary["metrics_error"] = error
        if spec.name == "vipbench":
            summary["grader_files"] = _write_vipbench(out_dir, run, items, merged)
        write_text(out_dir / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
    procs.barrier()
    return json.loads((out_dir / METRICS_FILE).read_text(encoding="utf-8"))


def format_table(summary: dict) -> str:
    """A plain-text table of a run's `metrics.json` content (what `vcontrast eval` prints).

    Examples:

    ```python
    >>> print(format_table({"benchmark": "seetrue", "method": "crg", "n_items": 2, "metrics": {"auroc": 0.75}}))
    seetrue · crg · 2 items
    metric  value
    ------  ------
    auroc   0.7500
    ```
    """
    head = " · ".join(
        str(v)
        for v in (
            summary.get("benchmark"),
            summary.get("split"),
            summary.get("method"),
            f"alpha {summary['config']['alpha']}" if "alpha" in summary.get("config", {}) else None,
            f"{summary.get('n_items')} items",
        )
        if v is not None
    )
    rows = [(name, f"{value:.4f}") for name, value in summary.get("metrics", {}).items()]
    if not rows:
        rows = [("(none)", "-")]
    width = max(len("metric"), *(len(r[0]) for r in rows))
    value_width = max(len("value"), *(len(r[1]) for r in rows))
    lines = [head, f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * value_width}"]
    lines += [f"{n:<{width}}  {v}" for n, v in rows]
    for key, label in (("regions_source", "regions"), ("proposals_source", "proposals")):
        if summary.get(key):
            lines.append(f"{label}: " + ", ".join(f"{k} {v}" for k, v in summary[key].items()))
    return "\n".join(lines)
