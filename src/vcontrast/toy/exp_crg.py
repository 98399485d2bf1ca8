"""Experiments "crg" and "cal_crg": CRG against the plain model on the toy tasks, through the eval runner.

Every number comes from `vcontrast.bench.runner.evaluate` on toy JSONL files (the same path as a real benchmark),
with the runner's methods (`vcontrast.bench.methods`), greedy, never tuned: "base" (the plain model), "crg" (alpha 1),
"overlay" (the regions outlined in red), "crg+overlay" and "vcd" (alpha 1, plausibility cutoff 0.1).

"crg" is experiment E1 of docs/results/PLAN.md, on the given toy model (default: the shipped one), `n_items` items
per task of the balanced "test" split (item seeds 0..n-1):

- spatial (4-way choice), swap (2-way choice), match (AUROC of P(yes)) and region VQA (exact match of the greedy
  answer): every method above, with the items' annotated regions. Spatial is also read separately on the items whose
  gold relation is the train split's favourite "left of" (prior-consistent) and on the others; H1.1's statistic is
  (crg − base on the inconsistent items) − (crg − base on the consistent ones).
- refexp (acc@0.5), broken down by `meta["kind"]` ("intrinsic" / "relational" expressions): random (the expected
  accuracy of a uniformly random proposal), crop ("base": the plain model scores the expression on each proposal's
  crop), crg (the paper's re-ranking: proposal i scores the drop in the expression's log-likelihood when only box i
  is blacked out, the unnormalised log-ratio) and oracle (some proposal has IoU >= 0.5). The expression is scored
  as the answer to "name one object in the image ." (the toy "refer" task, the format the test-bed model is trained
  on: the main rows) and to CRG's default "Describe the image." (secondary rows). Proposals: the annotated object
  boxes (oracle 100% by construction), and the boxes the toy proposer (`vcontrast.toy.proposer`) finds in the
  pixels, class-agnostic, as detector proposals on RefCOCO.
- method − base (and crg − crop, crg − random) differences come with a 95% paired bootstrap interval over items
  (`budget.bootstrap` resamples, the same resamples for every comparison).
- extras, cheap next to the rest: the masking ablation of the CRG paper's Table 5 (one box enclosing the regions,
  "combined"; the whole image black, "whole"; against the default union of the boxes) and CRG with the proposer's
  regions instead of the annotated ones, on the four non-refexp tasks.

Predictions are written as they are made (`work_dir/crg/<run>/<task>/`); a rerun reuses every finished prediction
and only computes the missing ones, then recomputes the statistics.

"cal_crg": the caption models of "cal_noise" at one noise rate (`budget.cal_crg_noise`), CAL and MLE, every seed,
with and without CRG, on what a caption-only model can do: greedy captions (attribute and object F1, `caption_f1`;
regions = every thing in the image), a caption choice between the true caption and a minimally corrupted one
(SugarCrepe-style swap or replacement of a colour or shape; regions = the changed objects) and referring
expressions (the expression scored as a caption, "describe the image .").
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vcontrast.bench.methods import CRGMethod
from vcontrast.toy.experiments import (
    ExperimentBudget,
    check_work_dir,
    markdown_table,
    paired_bootstrap,
    pct,
    pct_delta,
    pct_spread,
    summarize,
)
from vcontrast.toy.grammar import PROMPTS

logger = logging.getLogger(__name__)

__all__ = [
    "CRG_TASKS",
    "E1_METHODS",
    "MaskingCRGMethod",
    "caption_swap_items",
    "compare",
    "crg_summary",
    "item_scores",
    "prior_gap",
    "proposed_items",
    "run_cal_crg",
    "run_crg",
    "subset",
    "task_metric",
]

CRG_TASKS = ("spatial", "swap", "match", "region_vqa", "refexp")  # E1's tasks, in PLAN.md's order
GUIDED_TASKS = CRG_TASKS[:-1]  # every method of E1_METHODS runs on these, with the annotated regions
E1_METHODS = ("base", "overlay", "crg", "crg+overlay", "vcd")
VS_CRG = ("overlay", "crg+overlay", "vcd")  # compared with crg too (exploratory)
EXTRAS = ("crg-combined", "crg-whole", "crg-proposed")  # the masking ablation and CRG with the proposer's regions
# The prompt a refexp expression is scored as the answer to: the toy "refer" task's (main rows), CRG's default.
REFEXP_FORMATS = {"refer": PROMPTS["refer"], "describe": None}
REFEXP_BOXES = {"true": "annotated boxes", "proposed": "toy proposer's boxes"}
REFEXP_KINDS = ("all", "intrinsic", "relational")
CAL_CRG_TASKS = ("caption", "caption_swap", "refexp")
METRIC_KEYS = {
    "region_vqa": "region_vqa/exact_match",
    "spatial": "choice/accuracy",
    "swap": "choice/accuracy",
    "caption_swap": "choice/accuracy",
    "match": "match/auroc",
    "refexp": "refexp/acc@0.5",
    "caption": "caption/exact_match",
}
METRIC_LABELS = {
    "region_vqa": "exact match",
    "spatial": "accuracy",
    "swap": "accuracy",
    "caption_swap": "accuracy",
    "match": "AUROC",
    "refexp": "acc@0.5",
    "caption": "exact match",
}
ABLATION_MODES = ("union", "combined", "whole")
VQA_MAX_NEW_TOKENS = 8  # region-VQA answers are one word and </s>


class MaskingCRGMethod(CRGMethod):
    """The runner's "crg" method with another way of making the contrast image (`CRG`'s `mode`).

    Args:
        model (`PreTrainedModel`): the VLM, in eval mode.
        processor (`ProcessorMixin`): its processor.
        alpha (`float`, *optional*, defaults to 1.0): guidance strength.
        mode (`str`, *optional*, defaults to `"union"`): "union" (the boxes blacked out), "combined" (one box
            enclosing them all) or "whole" (the whole image black).
        **kwargs: `proposer`, `proposer_model`, `max_new_tokens` (see `vcontrast.bench.methods.ModelMethod`).
    """

    def __init__(self, model: Any, processor: Any, alpha: float = 1.0, mode: str = "union", **kwargs: Any):
        from vcontrast.crg import CRG

        super().__init__(model, processor, alpha=alpha, **kwargs)
        self.crg = CRG(model, processor, alpha=alpha, mode=mode)
        self.mode = mode

    @property
    def config(self) -> dict:
        """The "crg" settings plus the masking mode."""
        return {**super().config, "mode": self.mode}


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def _write_split(task: str, n: int, folder: Path) -> Path:
    from vcontrast.toy.tasks import make_split

    path = folder / f"{task}_test.jsonl"
    if not (path.is_file() and sum(1 for _ in path.open()) == n):
        make_split(task, n, seed=0, split="test", out_dir=folder)
    return path


def proposed_items(path: Path, out_path: Path) -> Path:
    """The items of a toy JSONL file as the proposer must see them: no regions, and for "refexp" items the boxes of
    every object `vcontrast.toy.proposer` finds in the image (in a random order fixed by the item id) as proposals.

    Args:
        path (`Path`): a toy task file (`make_split`).
        out_path (`Path`): where to write the new file (image paths become absolute).

    Returns:
        `Path`: `out_path`.
    """

    from vcontrast.bench.items import read_items, write_items
    from vcontrast.bench.metrics import box_iou
    from vcontrast.regions import open_image
    from vcontrast.toy.proposer import ToyProposer

    proposer = ToyProposer()
    items = []
    for item in read_items(path):
        image = str(Path(item.image).resolve())  # the new file lives elsewhere: point at the original image
        item = replace(item, image=image, regions=[], meta={**item.meta, "boxes": "proposed"})
        if item.task == "refexp":
            boxes = [p.box for p in proposer(open_image(item.image), ["object"])]
            random.Random(item.id).shuffle(boxes)
            ious = box_iou(boxes, [item.target])[:, 0] if boxes else np.zeros(0)
            best = int(ious.argmax()) if len(ious) and ious.max() >= 0.5 else None
            item = replace(item, proposals=boxes, answer=best)
        items.append(item)
    write_items(items, out_path)
    return out_path


def caption_swap_items(n: int, folder: Path) -> Path:
    """`n` caption-choice items (SugarCrepe style, in the caption format): the true caption of a balanced test scene
    (2-3 objects, no bias) and the caption of the same scene with one colour or shape replaced or two colours swapped
    (`vcontrast.toy.grammar.corrupt`), in random order; `regions` are the changed objects.

    Returns:
        `Path`: `folder/caption_swap_test.jsonl` (images under `folder/images/`).
    """
    from vcontrast.bench.items import Item, write_items
    from vcontrast.toy.grammar import PROMPTS, caption, corrupt
    from vcontrast.toy.scenes import make_scene
    from vcontrast.toy.tasks import CORRUPTIONS

    path = folder / "caption_swap_test.jsonl"
    if path.is_file() and sum(1 for _ in path.open()) == n:
        return path
    (folder / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        rng = np.random.default_rng([i, 7_000_003])
        while True:
            kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
            image, scene = make_scene(int(rng.integers(2**62)), n_objects=int(rng.integers(2, 4)))
            found = corrupt(scene.objects, kind, rng)
            if found is not None:
                break
        wrong, changed = found
        true, false = caption(scene), caption(replace(scene, objects=wrong))
        gold = int(rng.integers(2))
        item_id = f"toy-caption_swap-test-{i}"
        image.save(folder / "images" / f"{item_id}.png")
        items.append(
            Item(
                id=item_id,
                task="choice",
                image=f"images/{item_id}.png",
                prompt=PROMPTS["caption"],
                candidates=[true, false] if gold == 0 else [false, true],
                answer=gold,
                regions=[o.box for o in changed],
                meta={"split": "test", "kind": kind, "scene": scene.to_dict()},
            )
        )
    write_items(items, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and per-item scores
# ---------------------------------------------------------------------------------------------------------------


def task_metric(task: str, summary: dict) -> float:
    """The headline metric of a toy task from the runner's `metrics.json` content (of a run on that task's file);
    NaN when the runner could not compute it (e.g. an AUROC on items of one class)."""
    metrics = summary["metrics"]
    for key in (f"{task}_test/{METRIC_KEYS[task]}", METRIC_KEYS[task]):
        if key in metrics:
            return float(metrics[key])
    logger.warning("%s: no %s in the run's metrics (%s)", task, METRIC_KEYS[task], summary.get("metrics_error"))
    return float("nan")


def item_scores(task: str, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Per-item values of a finished run, in item order, for bootstrap intervals and caption F1.

    Returns:
        `dict`: `"ids"` and `"kinds"` (`meta["kind"]`); `"correct"` (0/1 per item) for choice, VQA and refexp tasks;
        `"prior_consistent"` (the gold answer is the train split's favourite) for spatial; `"labels"` and `"p_yes"`
        for "match"; `"attr_f1"` and `"object_f1"` for "caption"; for "refexp" also `"random"` (the share of the
        proposals with IoU >= 0.5: the expected accuracy of a uniformly random pick) and `"oracle"` (1 when some
        proposal has IoU >= 0.5), over the proposals the method chose among (the item's, else those it recorded).
    """
    from vcontrast.bench.metrics import IOU_THRESHOLD, box_iou, choice_correct, exact_match
    from vcontrast.bench.runner import PREDICTIONS_FILE, read_predictions
    from vcontrast.bench.toy import load

    from .cal_eval import caption_f1

    items = load(data_dir, split=f"{task}_test")
    predictions = read_predictions(out_dir / PREDICTIONS_FILE)
    pairs = [(item, predictions[item.id]) for item in items]
    out: dict[str, Any] = {"ids": [item.id for item in items], "kinds": [item.meta.get("kind") for item in items]}
    if task == "match":
        out["labels"] = np.array([item.label for item, _ in pairs])
        out["p_yes"] = np.array([p["p_yes"] for _, p in pairs])
    elif task == "caption":
        scores = [caption_f1(p["text"], item.answer) for item, p in pairs]
        out["attr_f1"] = np.array([s["attr_f1"] for s in scores])
        out["object_f1"] = np.array([s["object_f1"] for s in scores])
    elif task == "region_vqa":
        out["correct"] = np.array([exact_match(p["text"], item.answer) for item, p in pairs], dtype=float)
    elif task == "refexp":
        out["correct"] = np.array(
            [box_iou([p["pred_box"]], [item.target])[0, 0] >= IOU_THRESHOLD for item, p in pairs], dtype=float
        )
        hits = [_proposal_hits(item, p) for item, p in pairs]
        out["random"] = np.array([h.mean() if h.size else 0.0 for h in hits])
        out["oracle"] = np.array([float(h.any()) for h in hits])
    else:
        out["correct"] = np.array([choice_correct(p["scores"], item.answer) for item, p in pairs], dtype=float)
        if all("prior" in item.meta for item, _ in pairs):  # spatial: the relation the train split favours
            out["prior_consistent"] = np.array([item.answer == item.meta["prior"] for item, _ in pairs])
    return out


def _proposal_hits(item: Any, prediction: dict) -> np.ndarray:
    # Per proposal the method chose among, whether it reaches IoU 0.5 with the target.
    from vcontrast.bench.metrics import IOU_THRESHOLD, box_iou

    proposals = item.proposals or prediction.get("proposals") or []
    if not proposals:
        return np.zeros(0, dtype=bool)
    return box_iou(proposals, [item.target])[:, 0] >= IOU_THRESHOLD


def _statistic(task: str, scores: dict, index: np.ndarray) -> float:
    from vcontrast.bench.metrics import auroc

    if len(index) == 0:
        raise ValueError(f"{task}: no items to score")
    if task == "match":
        return auroc(scores["labels"][index], scores["p_yes"][index])
    return float(scores["correct"][index].mean())


def _delta_interval(task: str, base: dict, other: dict, resamples: int) -> tuple[float, float]:
    if base["ids"] != other["ids"]:
        raise ValueError(f"{task}: the two runs scored different items")
    return paired_bootstrap(
        lambda i: _statistic(task, other, i) - _statistic(task, base, i), len(base["ids"]), resamples
    )


def compare(task: str, reference: dict, other: dict, resamples: int) -> dict[str, Any]:
    """`other − reference` on the same items (per-item scores of `item_scores`), with its 95% paired bootstrap
    interval.

    Args:
        task (`str`): the toy task (its statistic: AUROC for "match", the mean of `"correct"` otherwise).
        reference (`dict`), other (`dict`): per-item scores of two runs on the same items.
        resamples (`int`): bootstrap resamples.

    Returns:
        `dict`: `"delta"` (NaN where the statistic is undefined, e.g. no item) and `"ci"` (low, high).
    """
    try:
        full = np.arange(len(reference["ids"]))
        delta = _statistic(task, other, full) - _statistic(task, reference, full)
    except ValueError:
        delta = float("nan")
    return {"delta": delta, "ci": _delta_interval(task, reference, other, resamples)}


def subset(scores: dict, keep: np.ndarray) -> dict:
    """The per-item scores of the items where `keep` (a boolean mask) is true, every per-item field sliced."""
    keep = np.asarray(keep, dtype=bool)
    out = {}
    for key, value in scores.items():
        if isinstance(value, np.ndarray):
            out[key] = value[keep]
        elif isinstance(value, list) and len(value) == len(keep):
            out[key] = [v for v, k in zip(value, keep, strict=True) if k]
        else:
            out[key] = value
    return out


class _Evaluator:
    """Runs the eval runner for one model into `work/<tag>/<task>` and keeps the timings."""

    def __init__(self, model, processor, work: Path, budget: ExperimentBudget):
        self.model, self.processor, self.work, self.budget = model, processor, work, budget
        self.timings: dict[str, float] = {}

    def __call__(
        self,
        tag: str,
        task: str,
        data_dir: Path,
        method: str = "base",
        mode: str = "union",
        rerank_prompt: str | None = None,
    ) -> dict:
        from vcontrast.bench.runner import evaluate

        max_new = VQA_MAX_NEW_TOKENS if task == "region_vqa" else self.budget.max_new_tokens
        proposer = "toy" if tag.startswith("proposed") else None
        if method == "crg" and mode != "union":
            method = MaskingCRGMethod(
                self.model, self.processor, alpha=1.0, mode=mode, proposer=proposer, max_new_tokens=max_new
            )
        out_dir = self.work / tag / task
        start = time.perf_counter()
        summary = evaluate(
            "toy",
            data_dir,
            model=(self.model, self.processor),
            method=method,
            alpha=1.0,
            out_dir=out_dir,
            split=f"{task}_test",
            batch_size=self.budget.eval_batch_size,
            show_progress=False,
            proposer=proposer,
            max_new_tokens=max_new,
            rerank_prompt=rerank_prompt,  # the refexp format, part of the method's config
        )
        # The time of the run that made the predictions: a rerun that only reads them keeps the first measurement.
        timing = out_dir / "timing.json"
        if not timing.is_file():
            timing.write_text(json.dumps({"eval_s": round(time.perf_counter() - start, 1)}) + "\n")
        self.timings[f"{tag}/{task}"] = json.loads(timing.read_text())["eval_s"]
        summary["scores"] = item_scores(task, data_dir, out_dir)
        return summary


def _doc_paragraphs() -> tuple[list[str], list[str]]:
    # The module docstring's description of "crg" and of "cal_crg" (stored with the results).
    paragraphs = __doc__.split("\n\n")
    split = next(i for i, p in enumerate(paragraphs) if p.startswith('"cal_crg"'))
    return paragraphs[1:split], paragraphs[split:]


def _load_model(model: str | Path | None):
    from vcontrast.toy.model import load

    return load(model)


# ---------------------------------------------------------------------------------------------------------------
# "crg"
# ---------------------------------------------------------------------------------------------------------------


def run_crg(budget: ExperimentBudget, work_dir: Path, model: str | Path | None = None) -> tuple[str, dict, Any]:
    """Run "crg", experiment E1 of docs/results/PLAN.md (see the module docstring).

    Args:
        budget (`ExperimentBudget`): `n_items` test items per task, `eval_batch_size`, `max_new_tokens`, `bootstrap`.
        work_dir (`Path`): the runs go to `work_dir/crg/<run>/<task>/` (one eval-runner folder each; a rerun resumes).
        model (`str | Path`, *optional*): a toy model folder; defaults to the shipped one.

    Returns:
        `tuple[str, dict, Callable]`: the markdown tables, the raw numbers and the plot function.
    """
    from vcontrast.toy.model import WEIGHTS_DIR

    model_path = Path(model) if model is not None else WEIGHTS_DIR
    work = Path(work_dir) / "crg"
    check_work_dir(
        work,
        {
            "design": "E1",  # docs/results/PLAN.md; folders of the earlier design are refused
            "model": str(model_path.resolve()),
            "n_items": budget.n_items,
            "max_new_tokens": budget.max_new_tokens,
            "eval_batch_size": budget.eval_batch_size,
        },
    )
    true_dir, proposed_dir = work / "data" / "true", work / "data" / "proposed"
    for task in CRG_TASKS:
        path = _write_split(task, budget.n_items, true_dir)
        if not _has_items(proposed_dir / path.name, budget.n_items):
            proposed_items(path, proposed_dir / path.name)
    loaded, processor = _load_model(model_path)
    run = _Evaluator(loaded, processor, work, budget)

    # PLAN.md's runs first, the extras last (an interrupted run has the main results done first).
    results: dict[str, dict[str, dict]] = {}
    for task in GUIDED_TASKS:
        for method in E1_METHODS:
            results.setdefault(method, {})[task] = run(f"true-{method}", task, true_dir, method)
    refexp: dict[str, dict] = {}
    for boxes, data_dir in (("true", true_dir), ("proposed", proposed_dir)):
        for fmt, prompt in REFEXP_FORMATS.items():
            for method in ("base", "crg"):
                tag = f"{boxes}-{method}-{fmt}"
                refexp[f"{boxes}/{fmt}/{method}"] = run(tag, "refexp", data_dir, method, rerank_prompt=prompt)
    for mode in ABLATION_MODES[1:]:
        for task in GUIDED_TASKS:
            results.setdefault(f"crg-{mode}", {})[task] = run(f"true-crg-{mode}", task, true_dir, "crg", mode)
    for task in GUIDED_TASKS:
        results.setdefault("crg-proposed", {})[task] = run("proposed-crg", task, proposed_dir, "crg")

    summary = crg_summary(results, refexp, budget.bootstrap)
    summary["proposer"] = {
        task: _region_agreement(task, true_dir, work / "proposed-crg" / task) for task in GUIDED_TASKS
    } | {"refexp": _proposal_agreement(true_dir, proposed_dir)}
    data = {
        "setup": "\n\n".join(_doc_paragraphs()[0]),
        "model": str(model_path),
        "model_summary": _model_summary(loaded),
        "machine": _machine(),
        "summary": summary,
        "timings_s": run.timings,
        "eval_s_total": round(sum(run.timings.values()), 1),
        "metrics": {cond: {task: r["metrics"] for task, r in by.items()} for cond, by in results.items()}
        | {f"refexp/{key}": r["metrics"] for key, r in refexp.items()},
    }
    table = _crg_table(summary, budget, data)
    return table, data, partial(_plot_crg, summary=summary, budget=budget)


def _has_items(path: Path, n: int) -> bool:
    return path.is_file() and sum(1 for _ in path.open()) == n


def _model_summary(model: Any) -> dict[str, Any]:
    # The size of the evaluated model (recorded with the results; the runner's run.json has its fingerprint).
    config = model.config
    vision, text = config.vision_config, config.text_config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "vision": {k: getattr(vision, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")},
        "text": {
            k: getattr(text, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        },
    }


def _machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def crg_summary(results: dict[str, dict[str, dict]], refexp: dict[str, dict], resamples: int) -> dict[str, Any]:
    """E1's statistics from the eval runs' per-item scores.

    Args:
        results (`dict`): run name ("base", "overlay", "crg", "crg+overlay", "vcd", "crg-combined", "crg-whole",
            "crg-proposed") -> task -> the runner's summary with `"scores"` (`item_scores`).
        refexp (`dict`): `"{boxes}/{format}/{method}"` ("true"/"proposed", "refer"/"describe", "base"/"crg") -> the
            runner's summary of that refexp run with `"scores"`.
        resamples (`int`): bootstrap resamples.

    Returns:
        `dict`: `"tasks"` (per non-refexp task: metric, n, each run's value as the runner computed it, `vs_base` and
        `vs_crg` differences with intervals, accuracy `by_kind`), `"spatial_prior"`, `"refexp"` (per proposal set
        and format, per kind: random, crop, crg, oracle and the differences crg − crop, crg − random) and
        `"hypotheses"` (PLAN.md's H1.1-H1.5, each an estimate with its interval).
    """
    tasks: dict[str, dict] = {}
    for task in GUIDED_TASKS:
        base = results["base"][task]["scores"]
        entry: dict[str, Any] = {"metric": METRIC_LABELS[task], "n": len(base["ids"]), "values": {}, "vs_base": {}}
        for name, by in results.items():
            entry["values"][name] = task_metric(task, by[task])
            if name != "base":
                entry["vs_base"][name] = compare(task, base, by[task]["scores"], resamples)
        crg = results["crg"][task]["scores"]
        entry["vs_crg"] = {name: compare(task, crg, results[name][task]["scores"], resamples) for name in VS_CRG}
        if task != "match" and len(set(base["kinds"])) > 1:
            entry["by_kind"] = _by_kind({name: results[name][task]["scores"] for name in E1_METHODS})
        tasks[task] = entry
    summary = {
        "tasks": tasks,
        "spatial_prior": _spatial_prior({name: by["spatial"]["scores"] for name, by in results.items()}, resamples),
        "refexp": _refexp_summary(refexp, resamples),
        "bootstrap_resamples": resamples,
    }
    summary["hypotheses"] = _hypotheses(summary)
    return summary


def _by_kind(scores: dict[str, dict]) -> dict[str, dict[str, Any]]:
    # Accuracy per item kind (region VQA: colour / shape / size; swap: the kind of hard negative), per run.
    kinds = np.array(next(iter(scores.values()))["kinds"], dtype=object)
    return {
        str(kind): {"n": int((kinds == kind).sum())}
        | {name: float(s["correct"][kinds == kind].mean()) for name, s in scores.items()}
        for kind in sorted(set(kinds))
    }


def prior_gap(base: dict, other: dict, index: np.ndarray) -> float:
    """H1.1's statistic on the items `index`: the gain `other − base` in accuracy on the prior-inconsistent items
    minus the gain on the prior-consistent ones. Raises `UndefinedMetricError` when one of the two groups is empty."""
    from vcontrast.bench.metrics import UndefinedMetricError

    consistent = base["prior_consistent"][index]
    if consistent.all() or not consistent.any():
        raise UndefinedMetricError("spatial: one of the prior-consistent / inconsistent groups is empty")
    gain = other["correct"][index] - base["correct"][index]
    return float(gain[~consistent].mean() - gain[consistent].mean())


def _spatial_prior(scores: dict[str, dict], resamples: int) -> dict[str, Any]:
    # Spatial accuracy on the prior-consistent items (gold "left of") and on the others, per run; for every run but
    # base, the gains over base in each group and their difference (H1.1's statistic for crg) with its interval.
    base = scores["base"]
    consistent = base["prior_consistent"]
    n = len(base["ids"])
    out: dict[str, Any] = {"n_consistent": int(consistent.sum()), "n_inconsistent": int((~consistent).sum())}
    for name, s in scores.items():
        row: dict[str, Any] = {
            "consistent": float(s["correct"][consistent].mean()) if consistent.any() else float("nan"),
            "inconsistent": float(s["correct"][~consistent].mean()) if (~consistent).any() else float("nan"),
        }
        if name != "base":
            row["gain_consistent"] = row["consistent"] - out["base"]["consistent"]
            row["gain_inconsistent"] = row["inconsistent"] - out["base"]["inconsistent"]
            try:
                gap = prior_gap(base, s, np.arange(n))
            except ValueError:
                gap = float("nan")
            row["gap"] = {"delta": gap, "ci": paired_bootstrap(partial(prior_gap, base, s), n, resamples)}
        out[name] = row
    return out


def _refexp_summary(runs: dict[str, dict], resamples: int) -> dict[str, Any]:
    # Per proposal set and expression format: per kind of expression, random, crop, crg, oracle (acc@0.5) and the
    # differences crg − crop, crg − random with intervals; "runner": the runner's own acc@0.5 of the two runs.
    out: dict[str, Any] = {}
    for boxes in REFEXP_BOXES:
        for fmt in REFEXP_FORMATS:
            crop_run, crg_run = runs[f"{boxes}/{fmt}/base"], runs[f"{boxes}/{fmt}/crg"]
            kinds = np.array(crop_run["scores"]["kinds"], dtype=object)
            entry: dict[str, Any] = {
                "runner": {"crop": task_metric("refexp", crop_run), "crg": task_metric("refexp", crg_run)}
            }
            for kind in REFEXP_KINDS:
                keep = np.ones(len(kinds), dtype=bool) if kind == "all" else kinds == kind
                crop, crg = subset(crop_run["scores"], keep), subset(crg_run["scores"], keep)
                random_pick = {"ids": crop["ids"], "correct": crop["random"]}
                entry[kind] = {
                    "n": int(keep.sum()),
                    "random": _mean(crop["random"]),
                    "crop": _mean(crop["correct"]),
                    "crg": _mean(crg["correct"]),
                    "oracle": _mean(crop["oracle"]),
                    "crg-crop": compare("refexp", crop, crg, resamples),
                    "crg-random": compare("refexp", random_pick, crg, resamples),
                }
            out[f"{boxes}/{fmt}"] = entry
    return out


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _hypotheses(summary: dict) -> list[dict[str, Any]]:
    # PLAN.md's H1.1-H1.5, each "method − reference" with its interval (H1.5 on the main expression format).
    tasks, refexp = summary["tasks"], summary["refexp"]
    rows = [
        ("H1.1", "spatial accuracy, crg − base", tasks["spatial"]["vs_base"]["crg"]),
        (
            "H1.1",
            "spatial, (crg − base on prior-inconsistent) − (crg − base on prior-consistent)",
            summary["spatial_prior"]["crg"]["gap"],
        ),
        ("H1.2", "swap accuracy, crg − base", tasks["swap"]["vs_base"]["crg"]),
        ("H1.3", "match AUROC, crg − base", tasks["match"]["vs_base"]["crg"]),
        ("H1.4", "region-VQA exact match, crg − base", tasks["region_vqa"]["vs_base"]["crg"]),
    ]
    for boxes, label in REFEXP_BOXES.items():
        for kind in REFEXP_KINDS[1:]:
            for other in ("crop", "random"):
                stat = refexp[f"{boxes}/refer"][kind][f"crg-{other}"]
                rows.append(("H1.5", f"refexp acc@0.5, {label}, {kind}, crg − {other}", stat))
    return [{"id": h, "statistic": text, **stat} for h, text, stat in rows]


def _region_agreement(task: str, true_dir: Path, proposed_out: Path) -> dict[str, float]:
    # How often the proposer's regions equal the annotated ones (as sets of boxes), and how often it found none.
    from vcontrast.bench.runner import PREDICTIONS_FILE, read_predictions
    from vcontrast.bench.toy import load

    predictions = read_predictions(proposed_out / PREDICTIONS_FILE)
    items = load(true_dir, split=f"{task}_test")
    same = whole = 0
    for item in items:
        p = predictions[item.id]
        same += sorted(tuple(map(float, b)) for b in p["regions"]) == sorted(item.regions)
        whole += p.get("regions_source") == "whole"
    return {"same_boxes": same / len(items), "whole_image_fallback": whole / len(items)}


def _proposal_agreement(true_dir: Path, proposed_dir: Path) -> dict[str, float]:
    # How often the proposer's refexp proposals are exactly the annotated object boxes, and how many it gives.
    from vcontrast.bench.toy import load

    true = load(true_dir, split="refexp_test")
    proposed = load(proposed_dir, split="refexp_test")
    same = [sorted(a.proposals) == sorted(b.proposals) for a, b in zip(true, proposed, strict=True)]
    return {"same_boxes": float(np.mean(same)), "mean_proposals": float(np.mean([len(b.proposals) for b in proposed]))}


# ---------------------------------------------------------------------------------------------------------------
# "crg": report
# ---------------------------------------------------------------------------------------------------------------

_RUN_LABELS = {
    "base": "base",
    "overlay": "overlay",
    "crg": "crg",
    "crg+overlay": "crg+overlay",
    "vcd": "vcd",
    "crg-combined": "crg, one combined box",
    "crg-whole": "crg, whole image black",
    "crg-proposed": "crg, proposer's regions",
}


def _delta(stat: dict) -> str:
    return pct_delta(stat["delta"], stat["ci"])


def _excludes_zero(stat: dict) -> str:
    low, high = stat["ci"]
    if any(np.isnan(v) for v in (low, high)):
        return "n/a"
    return "yes (> 0)" if low > 0 else "yes (< 0)" if high < 0 else "no"


def _crg_table(summary: dict, budget: ExperimentBudget, data: dict) -> str:
    tasks, prior, refexp = summary["tasks"], summary["spatial_prior"], summary["refexp"]
    model = data["model_summary"]
    lines = [
        f"### crg (E1): CRG on the toy test bed, {budget.n_items} balanced test items per task\n",
        (
            f"Model: `{data['model']}` ({model['parameters']:,} parameters, LM {model['text']['num_hidden_layers']} x "
            f"{model['text']['hidden_size']}). Every number from the eval runner; CRG alpha 1, VCD alpha 1 with "
            "cutoff 0.1, never tuned. Δ: difference in points, 95% paired bootstrap interval over items "
            f"({summary['bootstrap_resamples']:,} resamples). AUROC is given in percent."
        ),
        "",
        "#### Hypotheses (docs/results/PLAN.md)\n",
        markdown_table(
            ["", "statistic", "estimate [95% CI]", "interval excludes 0"],
            [[h["id"], h["statistic"], _delta(h), _excludes_zero(h)] for h in summary["hypotheses"]],
        ),
        "",
        "#### Methods on spatial, swap, match and region VQA (annotated regions)\n",
        markdown_table(
            ["task", "metric", *E1_METHODS],
            [[task, e["metric"], *(pct(e["values"][m]) for m in E1_METHODS)] for task, e in tasks.items()],
        ),
        "",
        "Δ vs base:\n",
        markdown_table(
            ["task", *E1_METHODS[1:]],
            [[task, *(_delta(e["vs_base"][m]) for m in E1_METHODS[1:])] for task, e in tasks.items()],
        ),
        "",
        "Δ vs crg (exploratory):\n",
        markdown_table(
            ["task", *VS_CRG],
            [
                [task, *(_delta(e["vs_crg"][m]) for m in ("overlay", "crg+overlay", "vcd"))]
                for task, e in tasks.items()
            ],
        ),
        "",
        (
            f'#### Spatial by prior: {prior["n_consistent"]} prior-consistent items (gold "left of", the train '
            f"split's favourite), {prior['n_inconsistent']} prior-inconsistent\n"
        ),
        markdown_table(
            ["run", "consistent", "inconsistent", "Δ consistent", "Δ inconsistent", "Δ inconsistent − Δ consistent"],
            [
                [
                    _RUN_LABELS[name],
                    pct(row["consistent"]),
                    pct(row["inconsistent"]),
                    pct_delta(row.get("gain_consistent")),
                    pct_delta(row.get("gain_inconsistent")),
                    _delta(row["gap"]) if "gap" in row else "",
                ]
                for name, row in prior.items()
                if isinstance(row, dict)
            ],
        ),
        "",
        "#### Refexp (acc@0.5)\n",
        _refexp_table(refexp),
        "",
        (
            'Format "refer": the expression scored as the answer to "name one object in the image ." (the test-bed '
            'model\'s training format, the main rows); "describe": as the answer to CRG\'s default "Describe the '
            'image.". random: the expected accuracy of a uniformly random proposal; crop: the plain model scores the '
            "expression on each proposal's crop; crg: the paper's re-ranking by the unnormalised log-ratio; oracle: "
            "some proposal has IoU >= 0.5."
        ),
        "",
        "#### Extras: the masking ablation (CRG paper Table 5) and the proposer's regions (Δ vs base)\n",
        _extras_table(tasks, summary["proposer"]),
    ]
    by_kind = [
        [task, kind, row["n"], *(pct(row[m]) for m in E1_METHODS)]
        for task, e in tasks.items()
        for kind, row in e.get("by_kind", {}).items()
    ]
    if by_kind:
        lines += ["", "#### Accuracy by item kind\n", markdown_table(["task", "kind", "n", *E1_METHODS], by_kind)]
    machine = data["machine"]
    lines += [
        "",
        (
            f"Machine: {machine['cpu_count']} CPU cores ({machine['platform']}), {machine['torch_threads']} torch "
            f"threads. Evaluation time {data['eval_s_total']:.0f} s (the sum of the runs as first measured; the "
            "wall time of this invocation is `wall_s` in the experiment's JSON)."
        ),
    ]
    return "\n".join(lines)


def _extras_table(tasks: dict, proposer: dict) -> str:
    rows = []
    for task, e in tasks.items():
        cells = [f"{pct(e['values'][name])} ({_delta(e['vs_base'][name])})" for name in EXTRAS]
        rows.append([task, e["metric"], pct(e["values"]["crg"]), *cells, pct(proposer[task]["same_boxes"])])
    head = ["task", "metric", "crg (union of boxes)", "one combined box", "whole image black", "proposer's regions"]
    return markdown_table([*head, "proposer = annotated (%)"], rows)


def _refexp_table(refexp: dict) -> str:
    rows = []
    for boxes, label in REFEXP_BOXES.items():
        for fmt in REFEXP_FORMATS:
            for kind in REFEXP_KINDS:
                r = refexp[f"{boxes}/{fmt}"][kind]
                rows.append(
                    [label, fmt, kind, r["n"]]
                    + [pct(r[k]) for k in ("random", "crop", "crg", "oracle")]
                    + [_delta(r["crg-crop"]), _delta(r["crg-random"])]
                )
    head = ["proposals", "format", "kind", "n", "random", "crop", "crg", "oracle", "crg − crop", "crg − random"]
    return markdown_table(head, rows)


def _plot_crg(path: Path, summary: dict, budget: ExperimentBudget) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    tasks = summary["tasks"]
    colors = dict(zip(E1_METHODS, ("tab:gray", "tab:green", "tab:red", "tab:orange", "tab:blue"), strict=True))
    _bars(
        left,
        [f"{t}\n({e['metric']})" for t, e in tasks.items()],
        {m: [e["values"][m] for e in tasks.values()] for m in E1_METHODS},
        {m: [e["vs_base"][m] for e in tasks.values()] for m in E1_METHODS[1:]},
        colors,
    )
    left.set_title(f"annotated regions, {budget.n_items} items per task (error bars: 95% CI of Δ vs base)", fontsize=9)
    groups = [(boxes, kind) for boxes in REFEXP_BOXES for kind in REFEXP_KINDS[1:]]
    rows = [summary["refexp"][f"{boxes}/refer"][kind] for boxes, kind in groups]
    _bars(
        right,
        [f"{'annotated' if boxes == 'true' else 'proposer'}\n{kind}" for boxes, kind in groups],
        {k: [r[k] for r in rows] for k in ("random", "crop", "crg", "oracle")},
        {"crg": [r["crg-crop"] for r in rows]},
        {"random": "silver", "crop": "tab:gray", "crg": "tab:red", "oracle": "black"},
    )
    right.set_title('refexp acc@0.5, "name one object" format (error bar: CI of crg − crop)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bars(ax: Any, labels: list[str], values: dict, deltas: dict, colors: dict) -> None:
    # Grouped bars in percent; a series with deltas gets the interval of its Δ as an error bar around its value.
    width = 0.8 / len(values)
    for k, (name, ys) in enumerate(values.items()):
        xs = np.arange(len(labels)) + (k - (len(values) - 1) / 2) * width
        errs = None
        if name in deltas:
            errs = np.array([[d["delta"] - d["ci"][0], d["ci"][1] - d["delta"]] for d in deltas[name]]).T * 100
            errs = np.nan_to_num(np.clip(errs, 0, None))
        ax.bar(xs, 100 * np.asarray(ys, dtype=float), width, label=name, color=colors[name], yerr=errs, capsize=2)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(values), loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)


# ---------------------------------------------------------------------------------------------------------------
# "cal_crg"
# ---------------------------------------------------------------------------------------------------------------


def run_cal_crg(budget: ExperimentBudget, work_dir: Path, model: str | Path | None = None) -> tuple[str, dict, Any]:
    """Run "cal_crg" (see the module docstring): trains the "cal_noise" models it needs if they are missing (from
    `model`'s vision tower, default the shipped one); returns `(markdown, raw numbers, plot function)`."""
    from . import cal_train

    rate = budget.cal_crg_noise
    models = cal_train.cell_models(budget, work_dir, model, "N1", rate)  # (method, f) -> E2's run, a = 0
    work = Path(work_dir) / "cal_crg"
    check_work_dir(work, {"noise": rate, "n": budget.n_test, "max_new_tokens": budget.max_new_tokens})
    data_dir = work / "data"
    _write_split("caption", budget.n_test, data_dir)
    _write_split("refexp", budget.n_test, data_dir)
    caption_swap_items(budget.n_test, data_dir)

    records = []
    timings = {}
    for seed in budget.seeds:
        for method in ("mle", "cal"):
            loaded, processor = _load_model(models[method, seed])
            run = _Evaluator(loaded, processor, work / f"{method}-seed{seed}", budget)
            for task in CAL_CRG_TASKS:
                for guidance in ("base", "crg"):
                    summary = run(f"true-{guidance}", task, data_dir, guidance)
                    record = {"method": method, "seed": seed, "guidance": guidance, "task": task}
                    if task == "caption":
                        for key in ("attr_f1", "object_f1"):
                            records.append(record | {"metric": key, "value": float(summary["scores"][key].mean())})
                    else:
                        records.append(record | {"metric": METRIC_LABELS[task], "value": task_metric(task, summary)})
            timings |= {f"{method}-seed{seed}/{k}": v for k, v in run.timings.items()}
    summary = _cal_crg_summary(records, budget)
    data = {
        "setup": "\n\n".join(_doc_paragraphs()[1]),
        "noise": rate,
        "records": records,
        "summary": summary,
        "timings_s": timings,
    }
    return _cal_crg_table(summary, budget), data, partial(_plot_cal_crg, summary=summary, budget=budget)


def _cal_crg_summary(records: list[dict], budget: ExperimentBudget) -> dict:
    rows: dict[str, dict] = {}
    for task, metric in dict.fromkeys((r["task"], r["metric"]) for r in records):
        value = {
            (r["method"], r["guidance"], r["seed"]): r["value"]
            for r in records
            if (r["task"], r["metric"]) == (task, metric)
        }
        entry: dict[str, Any] = {"task": task, "metric": metric}
        for method in ("mle", "cal"):
            for guidance in ("base", "crg"):
                entry[f"{method}/{guidance}"] = summarize([value[method, guidance, s] for s in budget.seeds])
            entry[f"{method}/crg_gain"] = summarize(
                [value[method, "crg", s] - value[method, "base", s] for s in budget.seeds]
            )
        for guidance in ("base", "crg"):
            entry[f"cal_minus_mle/{guidance}"] = summarize(
                [value["cal", guidance, s] - value["mle", guidance, s] for s in budget.seeds]
            )
        rows[f"{task}/{metric}"] = entry
    return rows


def _cal_crg_table(summary: dict, budget: ExperimentBudget) -> str:
    def delta(stats: dict) -> str:
        return pct_delta(stats["mean"], (stats["min"], stats["max"]))

    rows = [
        [
            e["task"],
            e["metric"],
            pct_spread(e["mle/base"]),
            pct_spread(e["mle/crg"]),
            delta(e["mle/crg_gain"]),
            pct_spread(e["cal/base"]),
            pct_spread(e["cal/crg"]),
            delta(e["cal/crg_gain"]),
            delta(e["cal_minus_mle/crg"]),
        ]
        for e in summary.values()
    ]
    head = ["task", "metric", "MLE", "MLE + CRG", "CRG gain", "CAL", "CAL + CRG", "CRG gain", "CAL+CRG − MLE+CRG"]
    return "\n".join(
        [
            (
                f"### cal_crg: caption models fine-tuned with {round(100 * budget.cal_crg_noise)}% swapped "
                "captions, with and without CRG\n"
            ),
            markdown_table(head, rows),
            "",
            (
                f"{budget.n_test} test items per task; mean ± std over {len(budget.seeds)} seeds; gains and "
                "differences: mean [min, max] over seeds, in points."
            ),
        ]
    )


def _plot_cal_crg(path: Path, summary: dict, budget: ExperimentBudget) -> None:
    import matplotlib.pyplot as plt

    keys = list(summary)
    bars = [
        ("mle/base", "MLE", "tab:gray"),
        ("mle/crg", "MLE + CRG", "silver"),
        ("cal/base", "CAL", "tab:red"),
        ("cal/crg", "CAL + CRG", "salmon"),
    ]
    fig, ax = plt.subplots(figsize=(8, 4.0))
    width = 0.8 / len(bars)
    for k, (key, label, color) in enumerate(bars):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(keys))]
        ys = [100 * summary[t][key]["mean"] for t in keys]
        errs = [100 * summary[t][key]["std"] for t in keys]
        ax.bar(xs, ys, width, yerr=errs, label=label, color=color, capsize=2)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k.replace("/", "\n") for k in keys], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(bars), loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    ax.set_title(
        f"CAL/MLE caption models ({round(100 * budget.cal_crg_noise)}% swapped captions) with and without "
        f"CRG, mean ± std over {len(budget.seeds)} seeds",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
