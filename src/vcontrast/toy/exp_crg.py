"""Experiments "crg" and "cal_crg": CRG against the plain model on the toy tasks, through the eval runner.

Every number comes from `vcontrast.bench.runner.evaluate` on toy JSONL files (the same path as a real benchmark),
method "base" (the plain model: `CRG` with alpha 0) or "crg" (alpha 1, the paper's default, never tuned), greedy.

"crg", on the shipped toy model (or `model`), `n_items` balanced test items per task (item seeds 0..n-1):

- tasks: region VQA (exact match of the greedy answer; a white box is drawn around the object asked about), spatial
  4-way choice and swap 2-way choice (accuracy of the highest-scoring candidate), image-text match (AUROC of P(yes))
  and referring expressions (acc@0.5 of the chosen proposal; "base" scores the expression on each proposal's crop,
  "crg" re-ranks by blacking out each proposal in turn: `CRG.rerank`).
- boxes: "true" = the items' annotated regions (and refexp proposals: every object's annotated box); "proposed" =
  the items stripped of their regions, so that the runner asks the toy proposer (`vcontrast.toy.proposer`, boxes
  found in the pixels for the noun phrases of the prompt or candidates), and refexp proposals = every object the
  proposer finds in the image (class-agnostic, as detector proposals on RefCOCO).
- masking ablation (the CRG paper's Table 5), true boxes: union of the boxes (the default), one box enclosing them
  all ("combined"), the whole image black ("whole", no regions at all). Refexp re-ranking blacks out one proposal at
  a time whatever the mode, so it is left out of the ablation.
- the CRG paper's baselines, true boxes, each method of the eval runner: "overlay" (the plain model on the image
  with the regions outlined in red, visual prompting), "crg+overlay" (CRG on that image) and "vcd" (contrast = the
  diffusion-noised image, VCD's alpha 1 and plausibility cutoff 0.1, no regions).
- CRG − base (and baseline − base) differences come with a 95% paired bootstrap interval over items.

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

logger = logging.getLogger(__name__)

__all__ = [
    "CRG_TASKS",
    "MaskingCRGMethod",
    "caption_swap_items",
    "item_scores",
    "proposed_items",
    "run_cal_crg",
    "run_crg",
    "task_metric",
]

CRG_TASKS = ("region_vqa", "spatial", "swap", "match", "refexp")
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
BASELINES = ("overlay", "crg+overlay", "vcd")  # eval-runner methods compared with base and crg (true boxes)
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
        `dict`: `"ids"`; `"correct"` (0/1 per item) for choice, VQA and refexp tasks; `"labels"` and `"p_yes"` for
        "match"; `"attr_f1"` and `"object_f1"` for "caption".
    """
    from vcontrast.bench.metrics import box_iou, choice_correct, exact_match
    from vcontrast.bench.runner import PREDICTIONS_FILE, read_predictions
    from vcontrast.bench.toy import load

    from .exp_cal import caption_f1

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
            [box_iou([p["pred_box"]], [item.target])[0, 0] >= 0.5 for item, p in pairs], dtype=float
        )
    else:
        out["correct"] = np.array([choice_correct(p["scores"], item.answer) for item, p in pairs], dtype=float)
        if all("prior" in item.meta for item, _ in pairs):  # spatial: the relation the train split favours
            out["prior_consistent"] = np.array([item.answer == item.meta["prior"] for item, _ in pairs])
    return out


def _statistic(task: str, scores: dict, index: np.ndarray) -> float:
    from vcontrast.bench.metrics import auroc

    if task == "match":
        return auroc(scores["labels"][index], scores["p_yes"][index])
    return float(scores["correct"][index].mean())


def _delta_interval(task: str, base: dict, other: dict, resamples: int) -> tuple[float, float]:
    if base["ids"] != other["ids"]:
        raise ValueError(f"{task}: the two runs scored different items")
    return paired_bootstrap(
        lambda i: _statistic(task, other, i) - _statistic(task, base, i), len(base["ids"]), resamples
    )


class _Evaluator:
    """Runs the eval runner for one model into `work/<tag>/<task>` and keeps the timings."""

    def __init__(self, model, processor, work: Path, budget: ExperimentBudget):
        self.model, self.processor, self.work, self.budget = model, processor, work, budget
        self.timings: dict[str, float] = {}

    def __call__(self, tag: str, task: str, data_dir: Path, method: str = "base", mode: str = "union") -> dict:
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
    """Run "crg" (see the module docstring); returns `(markdown, raw numbers, plot function)`."""
    from vcontrast.toy.model import WEIGHTS_DIR

    from . import exp_cal

    model_path = Path(model) if model is not None else WEIGHTS_DIR
    work = Path(work_dir) / "crg"
    check_work_dir(
        work,
        {
            "model": str(model_path.resolve()),
            "n_items": budget.n_items,
            "max_new_tokens": budget.max_new_tokens,
            "eval_batch_size": budget.eval_batch_size,
        },
    )
    true_dir, proposed_dir = work / "data" / "true", work / "data" / "proposed"
    for task in CRG_TASKS:
        path = _write_split(task, budget.n_items, true_dir)
        proposed_items(path, proposed_dir / path.name)
    loaded, processor = _load_model(model_path)
    run = _Evaluator(loaded, processor, work, budget)

    results: dict[str, dict[str, dict]] = {}
    for task in CRG_TASKS:
        results.setdefault("base/true", {})[task] = run("true-base", task, true_dir, "base")
        results.setdefault("crg/true", {})[task] = run("true-crg", task, true_dir, "crg")
        results.setdefault("crg/proposed", {})[task] = run("proposed-crg", task, proposed_dir, "crg")
    results["base/proposed"] = {"refexp": run("proposed-base", "refexp", proposed_dir, "base")}
    for mode in ABLATION_MODES[1:]:
        for task in CRG_TASKS[:-1]:
            results.setdefault(f"crg-{mode}/true", {})[task] = run(f"true-crg-{mode}", task, true_dir, "crg", mode)
    for name in BASELINES:
        for task in CRG_TASKS:
            results.setdefault(f"{name}/true", {})[task] = run(f"true-{name}", task, true_dir, name)

    summary = _crg_summary(results, budget, work, true_dir)
    data = {
        "setup": "\n\n".join(_doc_paragraphs()[0]),
        "model": str(model_path),
        "model_summary": exp_cal.model_summary(model_path),
        "summary": summary,
        "timings_s": run.timings,
        "eval_s_total": round(sum(run.timings.values()), 1),
        "metrics": {cond: {task: r["metrics"] for task, r in by.items()} for cond, by in results.items()},
    }
    return _crg_table(summary, budget), data, partial(_plot_crg, summary=summary, budget=budget)


def _region_agreement(task: str, true_dir: Path, proposed_out: Path) -> dict[str, float]:
    # How often the proposer's regions equal the annotated ones (as sets of boxes), and how often it found none.
    from vcontrast.bench.runner import PREDICTIONS_FILE, read_predictions
    from vcontrast.bench.toy import load

    predictions = read_predictions(proposed_out / PREDICTIONS_FILE)
    items = load(true_dir, split=f"{task}_test")
    same = whole = 0
    for item in items:
        p = predictions[item.id]
        if task == "refexp":
            same += sorted(map(tuple, p.get("proposals", item.proposals))) == sorted(item.proposals)
        else:
            same += sorted(tuple(map(float, b)) for b in p["regions"]) == sorted(item.regions)
            whole += p.get("regions_source") == "whole"
    return {"same_boxes": same / len(items), "whole_image_fallback": whole / len(items)}


def _crg_summary(results: dict, budget: ExperimentBudget, work: Path, true_dir: Path) -> dict:
    summary: dict[str, dict] = {}
    for task in CRG_TASKS:
        base = results["base/true"][task]
        entry: dict[str, Any] = {"metric": METRIC_LABELS[task], "n": len(base["scores"]["ids"])}
        for cond, by in results.items():
            if task not in by:
                continue
            entry[cond] = task_metric(task, by[task])
            reference = results["base/proposed"][task] if cond == "crg/proposed" and task == "refexp" else base
            if not cond.startswith("base"):
                diff = entry[cond] - task_metric(task, reference)
                entry[f"{cond}/delta"] = diff
                entry[f"{cond}/delta_ci"] = _delta_interval(
                    task, reference["scores"], by[task]["scores"], budget.bootstrap
                )
        entry["proposer"] = _region_agreement(task, true_dir, work / "proposed-crg" / task)
        if "prior_consistent" in base["scores"]:
            entry["by_prior"] = _by_prior(results, task)
        if "correct" in base["scores"] and len(set(base["scores"]["kinds"])) > 1:
            entry["by_kind"] = _by_kind(results, task)
        summary[task] = entry
    return summary


def _by_prior(results: dict, task: str) -> dict[str, dict[str, float]]:
    # Accuracy on the items whose answer is / is not the one the train split favours ("left of" for spatial):
    # a model leaning on the language prior does well on the first group only.
    out = {}
    for cond in ("base/true", "crg/true", "crg/proposed", "crg-combined/true", "crg-whole/true"):
        scores = results[cond][task]["scores"]
        consistent = scores["prior_consistent"]
        out[cond] = {
            "prior_consistent": float(scores["correct"][consistent].mean()) if consistent.any() else float("nan"),
            "prior_inconsistent": float(scores["correct"][~consistent].mean())
            if (~consistent).any()
            else float("nan"),
            "n_consistent": int(consistent.sum()),
        }
    return out


def _by_kind(results: dict, task: str) -> dict[str, dict[str, float]]:
    # Accuracy per question kind (region VQA: colour / shape / size; swap: the kind of hard negative).
    out: dict[str, dict[str, float]] = {}
    for cond, by in results.items():
        if task not in by:
            continue
        scores = by[task]["scores"]
        kinds = np.array(scores["kinds"], dtype=object)
        out[cond] = {str(k): float(scores["correct"][kinds == k].mean()) for k in sorted(set(scores["kinds"]))}
    return out


def _crg_table(summary: dict, budget: ExperimentBudget) -> str:
    rows = []
    for task, e in summary.items():
        rows.append(
            [
                task,
                e["metric"],
                pct(e["base/true"]),
                pct(e["crg/true"]),
                pct_delta(e["crg/true/delta"], e["crg/true/delta_ci"]),
                pct(e["crg/proposed"]),
                pct_delta(e["crg/proposed/delta"], e["crg/proposed/delta_ci"]),
                pct(e["proposer"]["same_boxes"]),
            ]
        )
    head = [
        "task",
        "metric",
        "base",
        "CRG, true boxes",
        "Δ [95% CI]",
        "CRG, proposed boxes",
        "Δ [95% CI]",
        "proposed = true boxes (%)",
    ]
    refexp = summary["refexp"]
    lines = [
        f"### crg: plain model vs CRG (alpha 1), {budget.n_items} balanced test items per task\n",
        markdown_table(head, rows),
        "",
        (
            f"Refexp with proposed proposals: base {pct(refexp['base/proposed'])} vs CRG "
            f"{pct(refexp['crg/proposed'])} (the Δ of that row is against this base). Δ: CRG − base in points, 95% "
            "paired bootstrap interval over items."
        ),
        "",
    ]
    for task, e in summary.items():
        if "by_prior" in e:
            p = e["by_prior"]
            base, crg = p["base/true"], p["crg/true"]
            text = (
                f"{task}, accuracy on the items whose answer the train split favours ({base['n_consistent']} items) / "
                f"on the others: base {pct(base['prior_consistent'])} / {pct(base['prior_inconsistent'])}, CRG true "
                f"boxes {pct(crg['prior_consistent'])} / {pct(crg['prior_inconsistent'])}."
            )
            lines += [text, ""]
        if "by_kind" in e:
            k = e["by_kind"]
            cells = [f"{kind} {pct(k['base/true'][kind])} → {pct(k['crg/true'][kind])}" for kind in k["base/true"]]
            lines += [f"{task} by kind, base → CRG (true boxes): " + ", ".join(cells) + ".", ""]
    lines.append("### crg: masking ablation (CRG paper Table 5), true boxes\n")
    rows = []
    for task, e in summary.items():
        if "crg-combined/true" not in e:
            continue
        cells = [task, e["metric"], pct(e["base/true"]), pct(e["crg/true"])]
        for mode in ABLATION_MODES[1:]:
            key = f"crg-{mode}/true"
            cells.append(f"{pct(e[key])} ({pct_delta(e[f'{key}/delta'], e[f'{key}/delta_ci'])})")
        rows.append(cells)
    lines.append(
        markdown_table(
            ["task", "metric", "base", "union of boxes", "one combined box (Δ)", "whole image black (Δ)"], rows
        )
    )
    if all(f"{name}/true" in e for e in summary.values() for name in BASELINES):
        lines += ["", "### crg: the CRG paper's baselines, true boxes (Δ vs base)\n"]
        rows = []
        for task, e in summary.items():
            cells = [task, e["metric"], pct(e["base/true"])]
            for key in ("overlay/true", "crg/true", "crg+overlay/true", "vcd/true"):
                cells.append(f"{pct(e[key])} ({pct_delta(e[f'{key}/delta'], e[f'{key}/delta_ci'])})")
            rows.append(cells)
        head = ["task", "metric", "base", "overlay", "crg", "crg+overlay", "vcd"]
        lines.append(markdown_table(head, rows))
    return "\n".join(lines)


def _plot_crg(path: Path, summary: dict, budget: ExperimentBudget) -> None:
    import matplotlib.pyplot as plt

    tasks = list(summary)
    bars = [
        ("base/true", "base", "tab:gray"),
        ("crg/true", "CRG, true boxes (union)", "tab:red"),
        ("crg/proposed", "CRG, proposed boxes", "tab:orange"),
        ("crg-combined/true", "CRG, one combined box", "tab:purple"),
        ("crg-whole/true", "CRG, whole image black", "tab:blue"),
    ]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(bars)
    for k, (key, label, color) in enumerate(bars):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i, t in enumerate(tasks) if key in summary[t]]
        ys = [100 * summary[t][key] for t in tasks if key in summary[t]]
        errs = []
        for t in tasks:
            if key not in summary[t]:
                continue
            if key.startswith("crg"):
                low, high = summary[t][f"{key}/delta_ci"]
                d = summary[t][f"{key}/delta"]
                errs.append((100 * (d - low), 100 * (high - d)))
            else:
                errs.append((0, 0))
        ax.bar(xs, ys, width, label=label, color=color, yerr=np.array(errs).T if errs else None, capsize=2)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n({summary[t]['metric']})" for t in tasks], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(bars), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax.set_title(
        f"CRG vs the plain toy model, {budget.n_items} items per task (error bars: 95% CI of Δ vs base)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# "cal_crg"
# ---------------------------------------------------------------------------------------------------------------


def run_cal_crg(budget: ExperimentBudget, work_dir: Path, model: str | Path | None = None) -> tuple[str, dict, Any]:
    """Run "cal_crg" (see the module docstring): trains the "cal_noise" models it needs if they are missing (from
    `model`'s vision tower, default the shipped one); returns `(markdown, raw numbers, plot function)`."""
    from . import exp_cal

    rate = budget.cal_crg_noise
    models = exp_cal.cell_models(budget, work_dir, model, "N1", rate)  # (method, f) -> E2's run, a = 0
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
