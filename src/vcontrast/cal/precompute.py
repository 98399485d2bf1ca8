"""Offline CAL: logit gains computed once with a frozen reference model, stored beside the data, and audits.

The paper's appendix A.5 finds that weights from a pretrained-only model work as well as those of the model being
trained. [`precompute_weights`] runs the reference model over a dataset once and stores, per sample, the label tokens
and their logit gains (deltas) and weights; [`PrecomputedWeightsCollator`] puts them into each training batch as
`cal_weights`, so the trainer runs no contrast pass at all (zero per-step overhead). Because the deltas are stored,
alpha, beta and the window can be changed at training time without recomputing anything.

[`audit`] scores a dataset with the same pass: per sample, the mean delta and the share of label tokens whose delta
is negative (the image argues against them: candidates for hallucinated or mismatched text), most suspicious first.

Both write JSON lines (one record per sample, keyed by the sample's id), append as they go and skip the ids already
in the file when restarted, so an interrupted run resumes where it stopped. The first line records what produced
the file ([`provenance`]: the model's config hash and weights fingerprint, the contrast, alpha/beta/window, the
tokenizer's vocabulary hash, and the processor's chat template, image backend and image-processor settings); a
resume with anything else, or a load that expects something else, raises a `ValueError` naming what differs,
instead of mixing two runs in one file. A path ending in `.safetensors` is written through a `.partial.jsonl`
sidecar and converted at the end (so only an unfinished run resumes; a rerun after a finished one recomputes the
file).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vcontrast.atomic import atomic_path, no_debris, write_text
from vcontrast.cal.config import CALConfig
from vcontrast.cal.loss import WEIGHTS_KEY, cal_deltas, cal_label_mask, token_weights
from vcontrast.models import get_adapter
from vcontrast.models.identity import backfill_model_config, digest, model_fingerprint
from vcontrast.models.image_backend import backfill_image_backend, image_backend_of

logger = logging.getLogger(__name__)

__all__ = [
    "PrecomputedWeightsCollator",
    "audit",
    "load_weights",
    "precompute_weights",
    "provenance",
    "summarize_audit",
    "template_token_mask",
]

META_KEY = "vcontrast_cal"  # the first JSONL line: {"vcontrast_cal": provenance}


def _tokenizer_fingerprint(tokenizer: Any) -> str | None:
    if tokenizer is None:
        return None
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    return digest(sorted(tokenizer.get_vocab().items()))


# Image-processor entries that name the class rather than say how pixels are made (the backend is recorded apart).
_VOLATILE_IMAGE_PROCESSOR_KEYS = ("image_processor_type", "processor_class", "_processor_class", "auto_map")
# Provenance fields recorded since the chat template and image-processor settings are: older files lack them.
_PROCESSOR_FIELDS = ("chat_template", "image_processor")


def _processor_settings(processor: Any) -> dict[str, str]:
    # Digests of what turns a record into tokens and pixels besides the vocabulary: the chat template (a changed
    # system prompt moves every position) and the image processor's settings (Qwen2-VL's max_pixels changes the
    # number of image tokens and every gain).
    template = getattr(processor, "chat_template", None)
    if template is None:
        template = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    out = {"chat_template": digest(template)}
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_dict"):
        settings = image_processor.to_dict()
        out["image_processor"] = digest({k: v for k, v in settings.items() if k not in _VOLATILE_IMAGE_PROCESSOR_KEYS})
    return out


def _backfill_processor_settings(record: dict, current: dict, path: Path, taken_as: str) -> dict:
    # A file written before vcontrast recorded the chat template and image-processor settings still resumes and
    # loads: take them as today's, saying which were not recorded (as `backfill_image_backend` does).
    missing = [key for key in _PROCESSOR_FIELDS if key in current and key not in record]
    if not missing:
        return dict(record)
    logger.warning(
        "%s was written before vcontrast recorded %s; %s this processor's", path, " and ".join(missing), taken_as
    )
    return {**record, **{key: current[key] for key in missing}}


def provenance(
    model: nn.Module | None = None, config: CALConfig | None = None, tokenizer: Any = None, processor: Any = None
) -> dict[str, Any]:
    """What produced a file of precomputed gains: the fields [`precompute_weights`] records and checks.

    Args:
        model (`PreTrainedModel`, *optional*): the reference model: `model_config` (hash of its config without paths
            and versions) and `model_weights` (fingerprint of every parameter's name, shape, dtype and 64 sampled
            values).
        config (`CALConfig`, *optional*): `contrast`, `alpha`, `beta`, `window`.
        tokenizer (`PreTrainedTokenizerBase` or processor, *optional*): `tokenizer` (hash of its vocabulary).
        processor (`ProcessorMixin`, *optional*): `chat_template` (hash of its chat template); and, if it has an
            image processor, `image_backend`, "pil" or "torchvision" (they resize differently, so the gains differ:
            `vcontrast.models.image_backend`), and `image_processor` (hash of its settings, `to_dict()` without
            the class names: a changed resolution changes the image tokens and the gains).

    Returns:
        `dict`: only the fields whose source was given.

    Examples:

    ```python
    >>> provenance(config=CALConfig(beta=3.0))
    {'contrast': 'none', 'alpha': 1.0, 'beta': 3.0, 'window': 3}
    ```
    """
    out: dict[str, Any] = {}
    if model is not None:
        out.update(model_fingerprint(model))
    if config is not None:
        out.update(_config_dict(config))
    if tokenizer is not None:
        out["tokenizer"] = _tokenizer_fingerprint(tokenizer)
    backend = image_backend_of(processor) if processor is not None else None
    if backend is not None:
        out["image_backend"] = backend
    if processor is not None:
        out.update(_processor_settings(processor))
    return out


def _check_provenance(
    path: Path, stored: dict | None, expected: dict, action: str, model: nn.Module | None = None
) -> None:
    # Raise naming each field that differs; fields the caller did not give are not checked. `model` is the one
    # `expected` was computed from, to recognise its config hash as an older vcontrast wrote it.
    if stored is None:
        raise ValueError(
            f"{path} has no provenance record (written by an older vcontrast, or not by vcontrast): cannot check that "
            f"it matches before {action}; delete it, or write to another path"
        )
    stored = backfill_image_backend(stored, expected, path, "taking it as computed with")
    stored = backfill_model_config(stored, model, path, "taking it as computed with")
    stored = _backfill_processor_settings(stored, expected, path, "taking it as computed with")
    differ = [
        f"{key}: file {stored.get(key)!r} != {value!r}"
        for key, value in expected.items()
        if value is not None and stored.get(key) != value
    ]
    if differ:
        names = {
            "model_config": "model config",
            "model_weights": "model weights",
            "model_class": "model class",
            "chat_template": "chat template",
            "image_processor": "image-processor settings",
        }
        what = ", ".join(names.get(d.split(":")[0], d.split(":")[0]) for d in differ)
        raise ValueError(
            f"{path} was computed with another {what} ({'; '.join(differ)}); refusing to {action}. Use another path, "
            "or the model/contrast/alpha/beta/window/tokenizer/processor it was written with"
        )


def _tokenizer_of(collate_fn: Any) -> Any:
    # The tokenizer a collator tokenizes with, when it exposes one (ConversationCollator, processor-based collators).
    for name in ("tokenizer", "processor", "processing_class"):
        value = getattr(collate_fn, name, None)
        if value is not None:
            return value
    return None


def _processor_of(tokenizer: Any, collate_fn: Any) -> Any:
    # The processor whose chat template and image processor make the batches: the `tokenizer` argument when it is a
    # processor, else the collator's `processor`; None if neither has an image processor.
    for candidate in (tokenizer, getattr(collate_fn, "processor", None)):
        if candidate is not None and getattr(candidate, "image_processor", None) is not None:
            return candidate
    return None


def _sample_id(row: Any, index: int, id_key: str) -> str:
    if isinstance(row, dict) and row.get(id_key) is not None:
        return str(row[id_key])
    return str(index)


def _read_jsonl(path: Path) -> tuple[dict | None, list[dict]]:
    # (provenance record or None, sample records). A run killed mid-write leaves a truncated last line: drop it (its
    # sample is recomputed).
    records = []
    meta = None
    if not path.exists():
        return meta, records
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("skipping a truncated line in %s", path)
                continue
            if META_KEY in record:
                meta = record[META_KEY]
            else:
                records.append(record)
    return meta, records


def _write_jsonl(path: Path, meta: dict, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in [{META_KEY: meta}, *records]))


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _run(
    model: nn.Module,
    dataset: Sequence,
    collate_fn: Callable[[list], dict],
    path: Path,
    config: CALConfig,
    make_records: Callable[[list[str], dict, torch.Tensor, torch.Tensor], list[dict]],
    *,
    meta: dict,
    batch_size: int,
    id_key: str,
    show_progress: bool,
    desc: str,
) -> list[dict]:
    """Resumable loop: collate the rows not yet in `path`, run `cal_deltas`, append one JSON line per sample.

    The file starts with the run's provenance record; resuming a file written by another run raises."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` (={batch_size!r}) has to be a positive integer")
    existed = path.exists()
    with no_debris(path):  # a failure before the first record leaves no file or folder of ours behind
        try:
            return _append_records(
                model, dataset, collate_fn, path, config, make_records, meta, batch_size, id_key, show_progress, desc
            )
        except BaseException:
            if not existed and path.exists() and not _read_jsonl(path)[1]:  # only the provenance line
                path.unlink()
            raise


def _append_records(
    model, dataset, collate_fn, path, config, make_records, meta, batch_size, id_key, show_progress, desc
) -> list[dict]:
    stored_meta, kept = _read_jsonl(path)
    if path.exists() and (kept or stored_meta is not None):
        _check_provenance(path, stored_meta, meta, "resume (append to) it", model)
    done = {record["id"] for record in kept}
    # (Re)written with the provenance first and without a truncated tail, so that appends start on a clean line.
    _write_jsonl(path, meta, kept)
    todo = [(i, _sample_id(row, i, id_key)) for i, row in enumerate(dataset)]
    ids = [sid for _, sid in todo]
    if len(set(ids)) != len(ids):
        raise ValueError(f"sample ids (field {id_key!r}, else the row index) are not unique")
    todo = [(i, sid) for i, sid in todo if sid not in done]
    device = next(model.parameters()).device
    with (
        path.open("a") as out,
        tqdm(total=len(dataset), initial=len(dataset) - len(todo), desc=desc, disable=not show_progress) as bar,
    ):
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = _to_device(collate_fn([dataset[i] for i, _ in chunk]), device)
            delta, mask = cal_deltas(model, batch, config)
            for record in make_records([sid for _, sid in chunk], batch, delta, mask):
                out.write(json.dumps(record) + "\n")
            out.flush()
            bar.update(len(chunk))
    return _read_jsonl(path)[1]


def precompute_weights(
    model: nn.Module,
    dataset: Sequence,
    collate_fn: Callable[[list], dict],
    path: str | Path,
    config: CALConfig | None = None,
    *,
    batch_size: int = 8,
    id_key: str = "id",
    show_progress: bool = True,
    tokenizer: Any = None,
) -> Path:
    """Compute CAL's logit gains and weights once with a frozen reference model and store them beside the data.

    Args:
        model (`PreTrainedModel`): the reference VLM (e.g. the model after its alignment stage); run in eval mode
            without gradient, its modes are restored.
        dataset (`Sequence`): the training rows, indexable (a list or a `datasets.Dataset`).
        collate_fn (`Callable[[list], dict]`): the training collator (returns `input_ids`, pixel inputs, `labels`).
        path (`str` or `Path`): output `.jsonl` (one record per sample: `id`, `tokens`, `delta`, `weights`, aligned
            with the sample's label tokens, see [`vcontrast.cal.cal_label_mask`]) or `.safetensors`.
        config (`CALConfig`, *optional*): contrast condition and the alpha/beta/window of the stored `weights`.
        batch_size (`int`, *optional*, defaults to 8): rows per forward.
        id_key (`str`, *optional*, defaults to `"id"`): row field with a stable sample id; the row index otherwise.
        show_progress (`bool`, *optional*, defaults to `True`): show a tqdm progress bar.
        tokenizer (`PreTrainedTokenizerBase` or processor, *optional*): recorded in the provenance; defaults to the
            collator's `tokenizer`/`processor` attribute, if it has one.

    Returns:
        `Path`: the written file, starting with its [`provenance`]. Rerunning with the same path skips the ids
        already stored (resume) if the model, contrast, alpha/beta/window, tokenizer and processor (chat template,
        image backend and settings) are the same, and raises a `ValueError` naming what differs otherwise; for a
        `.safetensors` path, resuming holds for an interrupted run only (its `.partial.jsonl`), a finished file is
        recomputed.

    Examples:

    ```python
    >>> precompute_weights(reference_model, rows, collator, "data/train.cal.jsonl")
    >>> collate = PrecomputedWeightsCollator(collator, load_weights("data/train.cal.jsonl"), model)
    >>> trainer = CALTrainer(..., data_collator=collate)  # no contrast pass during training
    ```
    """
    config = CALConfig() if config is None else config
    path = Path(path)
    jsonl = path.with_suffix(".partial.jsonl") if path.suffix == ".safetensors" else path

    def records(ids, batch, delta, mask):
        weights = token_weights(delta, mask, config.alpha, config.beta, config.window)
        out = []
        for b, sid in enumerate(ids):
            pos = mask[b].nonzero().squeeze(-1)
            out.append(
                {
                    "id": sid,
                    "tokens": batch["labels"][b, pos].tolist(),
                    "delta": [round(float(x), 6) for x in delta[b, pos]],
                    "weights": [round(float(x), 6) for x in weights[b, pos]],
                }
            )
        return out

    meta = provenance(
        model,
        config,
        tokenizer if tokenizer is not None else _tokenizer_of(collate_fn),
        processor=_processor_of(tokenizer, collate_fn),
    )
    stored = _run(
        model,
        dataset,
        collate_fn,
        jsonl,
        config,
        records,
        meta=meta,
        batch_size=batch_size,
        id_key=id_key,
        show_progress=show_progress,
        desc="CAL weights",
    )
    if path.suffix != ".safetensors":
        return path
    from safetensors.torch import save_file

    tensors = {}
    for r in stored:
        tensors[f"{r['id']}/tokens"] = torch.tensor(r["tokens"], dtype=torch.long)
        tensors[f"{r['id']}/delta"] = torch.tensor(r["delta"], dtype=torch.float32)
        tensors[f"{r['id']}/weights"] = torch.tensor(r["weights"], dtype=torch.float32)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "vcontrast.cal", META_KEY: json.dumps(meta)})
    jsonl.unlink()
    return path


def _config_dict(config: CALConfig) -> dict:
    contrast = config.contrast if isinstance(config.contrast, str) else config.contrast.name
    return {"alpha": config.alpha, "beta": config.beta, "window": config.window, "contrast": contrast}


def load_weights(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    contrast: str | None = None,
    tokenizer: Any = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Read what [`precompute_weights`] wrote: `{id: {"tokens", "delta", "weights"}}` as tensors.

    Each given expectation is checked against the file's [`provenance`], and a mismatch raises a `ValueError` naming
    what differs. Training usually checks only the tokenizer (the token ids must mean the same); the reference model
    is often another model than the one trained (the paper's appendix A.5).

    Args:
        path (`str` or `Path`): a `.jsonl` or `.safetensors` file from [`precompute_weights`].
        model (`PreTrainedModel`, *optional*): the reference model the gains must come from.
        contrast (`str`, *optional*): the contrast condition they must use (its name, e.g. `"none"`, `"patch:0.5"`).
        tokenizer (`PreTrainedTokenizerBase` or processor, *optional*): the tokenizer whose ids they store.

    Examples:

    ```python
    >>> stored = load_weights("data/train.cal.jsonl", tokenizer=processor.tokenizer)
    >>> stored["0"]["delta"].shape == stored["0"]["tokens"].shape
    True
    ```
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no precomputed CAL weights at {path}")
    expected = provenance(model=model, tokenizer=tokenizer)
    if contrast is not None:
        expected["contrast"] = contrast
    out: dict[str, dict[str, torch.Tensor]] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(META_KEY)
        if expected:
            _check_provenance(path, None if meta is None else json.loads(meta), expected, "load it", model)
        for key, value in load_file(str(path)).items():
            sid, _, field = key.rpartition("/")
            out.setdefault(sid, {})[field] = value
        return out
    meta, records = _read_jsonl(path)
    if expected:
        _check_provenance(path, meta, expected, "load it", model)
    for r in records:
        out[r["id"]] = {
            "tokens": torch.tensor(r["tokens"], dtype=torch.long),
            "delta": torch.tensor(r["delta"], dtype=torch.float32),
            "weights": torch.tensor(r["weights"], dtype=torch.float32),
        }
    return out


class PrecomputedWeightsCollator:
    """Wrap a collator so that each batch carries precomputed CAL weights under `cal_weights` (B, T).

    The stored deltas of each row are placed at its label tokens ([`vcontrast.cal.cal_label_mask`]) and turned into
    weights with `config`'s alpha, beta and window (so these can differ from the precompute run). The stored label
    tokens must match the batch's, otherwise the data changed since the precompute and a `ValueError` says which id.

    Args:
        collator (`Callable[[list], dict]`): the training collator.
        weights (`dict`): [`load_weights`]'s result.
        model (`PreTrainedModel` or `ModelAdapter`): the model family (for its image token).
        config (`CALConfig`, *optional*): alpha, beta and window; defaults to `CALConfig()`.
        id_key (`str`, *optional*, defaults to `"id"`): the row field holding the sample id (keep it through the
            Trainer with `remove_unused_columns=False`).

    Examples:

    ```python
    >>> collate = PrecomputedWeightsCollator(collator, load_weights("train.cal.jsonl"), model, CALConfig(beta=3.0))
    ```
    """

    def __init__(
        self,
        collator: Callable[[list], dict],
        weights: dict[str, dict[str, torch.Tensor]],
        model: nn.Module,
        config: CALConfig | None = None,
        id_key: str = "id",
    ):
        self.collator = collator
        self.weights = weights
        self.adapter = get_adapter(model)
        self.config = CALConfig() if config is None else config
        self.id_key = id_key

    def __call__(self, rows: list) -> dict:
        missing = [r for r in rows if not isinstance(r, dict) or r.get(self.id_key) is None]
        if missing:
            raise ValueError(f"every row needs its sample id under {self.id_key!r} to find its precomputed weights")
        batch = dict(self.collator([dict(r) for r in rows]))
        mask = cal_label_mask(self.adapter, batch)
        delta = torch.zeros(mask.shape, dtype=torch.float32)
        for b, row in enumerate(rows):
            sid = str(row[self.id_key])
            if sid not in self.weights:
                raise ValueError(f"no precomputed CAL weights for sample id {sid!r}")
            stored = self.weights[sid]
            pos = mask[b].nonzero().squeeze(-1)
            if not torch.equal(batch["labels"][b, pos].cpu(), stored["tokens"]):
                raise ValueError(f"sample id {sid!r}: the label tokens differ from the precomputed ones")
            delta[b, pos] = stored["delta"]
        batch[WEIGHTS_KEY] = token_weights(delta, mask.cpu(), self.config.alpha, self.config.beta, self.config.window)
        return batch


def template_token_mask(tokenizer: Any, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the label tokens the chat template wrote rather than the answer's text.

    These are the tokenizer's special tokens (end-of-turn such as `</s>`, `<|im_end|>`, `<end_of_turn>`, and role
    markers written as special tokens such as `<|im_start|>`), and whitespace-only tokens right after one (the
    newline after Qwen's `<|im_end|>`). Their gain says how well the model knows the template, not the image, so
    audits leave them out.

    Args:
        tokenizer (`PreTrainedTokenizerBase` or processor): the tokenizer of the batch.
        input_ids (`torch.Tensor`): (B, T) token ids.
        mask (`torch.Tensor`): (B, T) bool label mask ([`vcontrast.cal.cal_label_mask`]).
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    is_special = torch.isin(input_ids, special)
    out = mask & is_special
    blank = {int(t) for t in input_ids[mask & ~is_special].unique().tolist() if not tokenizer.decode([int(t)]).strip()}
    if blank:
        after_special = torch.zeros_like(out)
        after_special[:, 1:] = is_special[:, :-1]
        blank_ids = torch.tensor(sorted(blank), dtype=input_ids.dtype, device=input_ids.device)
        out |= mask & after_special & torch.isin(input_ids, blank_ids)
    return out


def audit(
    model: nn.Module,
    dataset: Sequence,
    collate_fn: Callable[[list], dict],
    path: str | Path,
    config: CALConfig | None = None,
    *,
    batch_size: int = 8,
    id_key: str = "id",
    show_progress: bool = True,
    tokenizer: Any = None,
) -> list[dict]:
    """Score how much the image supports each sample's text; most suspicious samples first.

    Template tokens (end-of-turn, role markers: [`template_token_mask`]) are left out of every statistic. Per sample:
    `n_tokens` (answer tokens scored), `n_template` (template tokens left out), `mean_delta` (mean logit gain from
    the image), `frac_negative` (share of tokens with a negative gain: the image argues against them, candidates for
    hallucinated or mismatched text), `min_delta` and `min_token` (the most contradicted token id), and
    `contradicted`: every token with a negative gain, in order, as `{"position", "token", "text", "delta"}`
    (`position` counts the sample's answer tokens). The records are appended to `path` as JSON lines while running
    (resumable), then the file is rewritten sorted by `frac_negative` (descending), then `mean_delta` (ascending).

    Args:
        model, dataset, collate_fn, config, batch_size, id_key, show_progress: as in [`precompute_weights`] (a
            resume with another model or config raises).
        path (`str` or `Path`): the JSONL output.
        tokenizer (`PreTrainedTokenizerBase` or processor, *optional*): decodes the contradicted tokens and knows
            the special tokens; defaults to the collator's `tokenizer`/`processor` attribute. Required one way or
            the other.

    Returns:
        `list[dict]`: the sorted records (see [`summarize_audit`] for a summary).

    Examples:

    ```python
    >>> records = audit(model, rows, collator, "audit.jsonl", tokenizer=processor)
    >>> records[0]["frac_negative"] >= records[-1]["frac_negative"]
    True
    >>> [c["text"] for c in records[0]["contradicted"]]
    ['left']
    ```
    """
    config = CALConfig() if config is None else config
    path = Path(path)
    tokenizer = tokenizer if tokenizer is not None else _tokenizer_of(collate_fn)
    if tokenizer is None:
        raise ValueError(
            "audit needs the tokenizer (to leave out template tokens and decode the contradicted ones): pass "
            "`tokenizer=processor`, or a collator with a `tokenizer` or `processor` attribute"
        )
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)

    def records(ids, batch, delta, mask):
        content = mask & ~template_token_mask(tokenizer, batch["input_ids"], mask)
        out = []
        for b, sid in enumerate(ids):
            d = delta[b][content[b]]
            tokens = batch["labels"][b][content[b]]
            n = int(d.numel())
            worst = int(d.argmin()) if n else None
            contradicted = [
                {
                    "position": i,
                    "token": int(tokens[i]),
                    "text": text_tokenizer.decode([int(tokens[i])]),
                    "delta": round(float(d[i]), 6),
                }
                for i in (d < 0).nonzero().squeeze(-1).tolist()
            ]
            out.append(
                {
                    "id": sid,
                    "n_tokens": n,
                    "n_template": int((mask[b] & ~content[b]).sum()),
                    "mean_delta": round(float(d.mean()), 6) if n else math.nan,
                    "frac_negative": round(float((d < 0).float().mean()), 6) if n else math.nan,
                    "min_delta": round(float(d[worst]), 6) if n else math.nan,
                    "min_token": int(tokens[worst]) if n else None,
                    "contradicted": contradicted,
                }
            )
        return out

    meta = provenance(model, config, tokenizer, processor=_processor_of(tokenizer, collate_fn))
    stored = _run(
        model,
        dataset,
        collate_fn,
        path,
        config,
        records,
        meta=meta,
        batch_size=batch_size,
        id_key=id_key,
        show_progress=show_progress,
        desc="CAL audit",
    )
    stored.sort(key=lambda r: (-_num(r["frac_negative"]), _num(r["mean_delta"], math.inf)))
    _write_jsonl(path, meta, stored)
    return stored


def _num(value: float | None, default: float = -math.inf) -> float:
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summarize_audit(records: list[dict], threshold: float = 0.5) -> dict:
    """Summary of [`audit`] records: sample count, token-weighted mean delta and share of negative gains, and the
    number of samples whose `frac_negative` exceeds `threshold`.

    Examples:

    ```python
    >>> summarize_audit([{"n_tokens": 2, "mean_delta": 1.0, "frac_negative": 0.5}])["mean_delta"]
    1.0
    ```
    """
    scored = [r for r in records if r.get("n_tokens")]
    tokens = sum(r["n_tokens"] for r in scored)
    return {
        "samples": len(records),
        "tokens": tokens,
        "mean_delta": sum(r["mean_delta"] * r["n_tokens"] for r in scored) / tokens if tokens else math.nan,
        "frac_negative": sum(r["frac_negative"] * r["n_tokens"] for r in scored) / tokens if tokens else math.nan,
        "suspicious": sum(r["frac_negative"] > threshold for r in scored),
        "threshold": threshold,
    }
