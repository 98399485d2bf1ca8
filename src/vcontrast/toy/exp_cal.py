"""Experiments "cal_noise" (E2) and "cal_scratch" (E3) of docs/results/PLAN.md: CAL vs MLE under label noise.

Protocol ("cal_noise"):

1. Alignment, seed a (`align_model`): the recipe's projector-only PT (`train(stage="pt", trainable="projector")`,
   `budget.align_steps` steps at `budget.align_lr`) from the recipe's stage-1 model (`base`: the folder holding the
   text-pretrained LM and the pretrained vision tower, the recipe's `OUT/vision`, default `DEFAULT_BASE`). For
   a = 0, a finished `OUT/pt` next to it (the test bed's own PT, same steps, seed 0, same LM and tower) is reused.
2. IT from the aligned model, fine-tuning seed f: a fixed pool of `budget.pool_size` train-split examples of the IT
   task mix (`IT_MIX`, full-difficulty spatial, no curriculum), drawn from (a, f); projector + LM trained,
   `budget.finetune_steps` steps of `budget.batch_size` at `budget.finetune_lr`; every
   `TEXT_REPLAY_EVERY`-th step is a text-only batch (fresh text-only train examples, as in the recipe), trained with
   plain MLE by every method (CAL's delta is 0 without an image). Pool, noise, batch order and replay batches depend
   on (a, f) only, so all methods of one (a, f) and cell see the same ones.
3. Noise (`vcontrast.toy.noise`): N1 whole-answer swap, N2 one attribute replaced, N3 prior-aligned hallucination,
   at `budget.noise_rates` of the eligible descriptive examples. A cell is one (noise, rate); rate 0 is the one
   "clean" cell.
4. Methods (`METHODS`): MLE; CAL (1, 5); CAL (0, 5); CAL (1, p90), beta = the 90th percentile of the CAL deltas of
   the (a, f) pool's label tokens under the aligned model (the clean pool, computed once per (a, f) and recorded);
   the clean oracle (MLE on the pool without its corrupted examples, same steps; at rate 0 it is MLE, not rerun).
   CAL's window is 3 throughout.
5. Metrics (`vcontrast.toy.cal_eval`) on the balanced test split, `budget.n_test` items each: attribute-token NLL
   of true captions (primary), CHAIR-style hallucination rate of greedy captions, prior-inconsistent VQA accuracy.

Analysis: per (a, f) the difference method - MLE; mean and 95% t-interval over the pairs; where the interval
includes 0, TOST equivalence with margin 0.05 nats (NLL) or 2 points (rates); H2.1's four cells (N2 and N3 at the
noise rates above 0) Holm-corrected (two-sided t-test p-values; a hypothesis holds when its adjusted p < 0.05 and
the mean difference is negative).

Run order (`tier`): 1 = MLE and CAL (1, 5) at 0% and N2, N3 at the highest rate; 2 = MLE and CAL (1, 5) at the lower
non-zero rates of N2, N3 (H2.1's other cells); 3 = the other methods at 0% and the highest rate, and N1 at the highest
rate; 4 = the rest of the lower rates. `tier=k` trains tiers 1..k (0: none, report only); the report covers every
completed run on disk and lists the incomplete cells. Every run is resumable: a finished run folder (weights +
`metrics.json`) is reused, an interrupted one resumes from its checkpoint.

"cal_scratch" (E3): MLE and CAL (1, 5) at 0% and N2 at the highest rate, for `budget.scratch_pairs`, trained from
the stage-1 model itself (random projector) with the same pools, steps and learning rate; the aligned runs of the
same cells and pairs (shared with "cal_noise") are trained too if missing, and the report compares the two
protocols' CAL - MLE differences (H3: smaller from scratch).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from vcontrast.atomic import write_text
from vcontrast.toy.cal_report import METHODS
from vcontrast.toy.cal_runs import Run, cell_name, cells, noise_runs, scratch_runs, tier
from vcontrast.toy.cal_train import _train_seconds, aligned_model_if_ready, execute
from vcontrast.toy.experiments import ExperimentBudget, markdown_table

__all__ = ["reference_metrics", "run_cal_noise", "run_cal_scratch"]

REFERENCE_METRICS = {  # metric -> (column, percent)
    "attr_nll": ("attribute NLL", False),
    "hallucination": ("hallucination", True),
    "object_recall": ("object recall", True),
    "vqa_prior_inconsistent": ("prior-inconsistent VQA", True),
}


def reference_metrics(budget: ExperimentBudget, folder: Path, base: Path) -> dict[str, dict]:
    """The clean-test metrics of the models that tell whether an IT run made a model that uses the image: each ready
    aligned model ("aligned a{a}", where the IT runs start) and, when `base`'s folder holds one, the test bed itself
    (the recipe's final model after its own, longer IT). Evaluated once and cached in `folder/reference/`.

    Returns:
        `dict[str, dict]`: name -> `vcontrast.toy.cal_eval.evaluate_clean` metrics (with `"model"`, its folder).
    """
    from vcontrast.toy.cal_eval import clean_test_sets, evaluate_clean
    from vcontrast.toy.model import load

    models = {f"aligned a{a}": aligned_model_if_ready(budget, folder, base, a) for a in budget.align_seeds}
    if (Path(base).parent / "model.safetensors").is_file():
        models["test bed"] = Path(base).parent
    out, tests = {}, None
    for name, path in models.items():
        if path is None:
            continue
        cache = folder / "reference" / f"{name.replace(' ', '-')}.json"
        if not cache.is_file():
            tests = tests if tests is not None else clean_test_sets(budget.n_test)
            model, processor = load(path)
            metrics = evaluate_clean(
                model, processor, tests, batch_size=budget.eval_batch_size, max_new_tokens=budget.max_new_tokens
            )
            write_text(cache, json.dumps({"model": str(path), **metrics}, indent=1) + "\n")
        out[name] = json.loads(cache.read_text())
    return out


def _reference_lines(references: dict[str, dict], records: Sequence[dict]) -> list[str]:
    # The clean MLE runs next to the reference models, on the same test items.
    clean = [r for r in records if r["cell"] == "clean" and r["method"] == "mle" and r["protocol"] == "aligned"]
    rows = [
        [name, *(_reference_value(m[k], p) for k, (_, p) in REFERENCE_METRICS.items())]
        for name, m in references.items()
    ]
    if clean:
        means = {k: sum(r[k] for r in clean) / len(clean) for k in REFERENCE_METRICS}
        rows.append(
            [
                f"IT runs: clean MLE, mean of {len(clean)}",
                *(_reference_value(means[k], p) for k, (_, p) in REFERENCE_METRICS.items()),
            ]
        )
    if not rows:
        return []
    head = ["model", *(label for label, _ in REFERENCE_METRICS.values())]
    intro = "Reference points (clean test items): does an IT run make a model that uses the image?"
    return ["", intro, "", markdown_table(head, rows)]


def _reference_value(value: float, percent: bool) -> str:
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def _machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _timing(records: Sequence[dict], folder: Path, wall_s: float, alignment: bool = True) -> dict[str, Any]:
    # Compute time of the completed runs (training over all its sessions + evaluation) and, with `alignment`, of the
    # alignment runs (not for "cal_scratch", whose own runs skip that stage).
    train = [r["train_s"] for r in records if _finite(r.get("train_s"))]
    evals = [r["eval_s"] for r in records if _finite(r.get("eval_s"))]
    align = {p.name: _train_seconds(p) for p in sorted((folder / "align").glob("a*"))} if alignment else {}
    total = sum(train) + sum(evals) + sum(v for v in align.values() if _finite(v))
    return {
        "runs_complete": len(records),
        "train_s_per_run": sum(train) / len(train) if train else math.nan,
        "eval_s_per_run": sum(evals) / len(evals) if evals else math.nan,
        "align_train_s": align,
        "compute_s_total": round(total, 1),
        "this_invocation_wall_s": round(wall_s, 1),
        "machine": _machine(),
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _incomplete(runs: Sequence[Run], records: Sequence[dict], budget: ExperimentBudget) -> list[str]:
    # "tier k: cell / method: done of planned pairs" for every (tier, cell, method) with missing runs.
    done = {(r["protocol"], r["a"], r["f"], r["cell"], r["method"]) for r in records}
    groups: dict[tuple[int, str, str, str], list[int]] = {}
    for run in runs:
        key = (tier(run, budget), run.protocol, run.cell, run.method)
        groups.setdefault(key, [0, 0])
        groups[key][1] += 1
        groups[key][0] += (run.protocol, run.a, run.f, run.cell, run.method) in done
    return [
        f"tier {t}, {protocol}, {cell} / {METHODS[m]}: {k} of {n} runs"
        for (t, protocol, cell, m), (k, n) in sorted(groups.items())
        if k < n
    ]


def _notes(timing: dict, incomplete: list[str], base: Path, extra: list[str]) -> list[str]:
    m = timing["machine"]
    align = f"; alignment runs {timing['align_train_s']}" if timing["align_train_s"] else ""
    summary = (
        f"Stage-1 model: {base}. Runs complete: {timing['runs_complete']}; compute time so far "
        f"{timing['compute_s_total'] / 3600:.2f} h (training {timing['train_s_per_run']:.0f} s and evaluation "
        f"{timing['eval_s_per_run']:.0f} s per run on average{align}); this "
        f"invocation {timing['this_invocation_wall_s']:.0f} s. Machine: {m['processor']}, {m['cpu_count']} CPUs, "
        f"{m['torch_threads']} torch threads ({m['platform']})."
    )
    lines = [summary, *extra]
    if incomplete:
        lines += ["", f"Incomplete ({len(incomplete)} groups; the tables use the completed runs only):", ""]
        lines += [f"- {line}" for line in incomplete]
    else:
        lines += ["", "Every planned run is complete."]
    return lines


def _setup_line(budget: ExperimentBudget) -> str:
    return (
        f"Alignment: projector-only PT, {budget.align_steps} steps, seeds a = {list(budget.align_seeds)}; IT: pool of "
        f"{budget.pool_size} train examples per (a, f), f = {list(budget.seeds)}, {budget.finetune_steps} steps of "
        f"{budget.batch_size} at lr {budget.finetune_lr} (every 10th step text-only, MLE); noise "
        f"{', '.join(budget.noise_types)} at {', '.join(f'{round(100 * r)}%' for r in budget.noise_rates)} of the "
        f"eligible examples; metrics on {budget.n_test} clean test items each."
    )


def run_cal_noise(
    budget: ExperimentBudget, work_dir: Path, model: str | Path | None = None, tier: int = 4, workers: int = 1
) -> tuple[str, dict, Any]:
    """Run "cal_noise" (E2, see the module docstring); returns `(markdown, raw numbers, plot function)`.

    Args:
        budget (`ExperimentBudget`): steps, seeds, noise types and rates, test items.
        work_dir (`Path`): runs go to `work_dir/cal` (shared with "cal_scratch" and "cal_crg").
        model (`str | Path`, *optional*): the stage-1 model folder (default `DEFAULT_BASE`); must be None for a budget
            that builds its own (`stage1_model`).
        tier (`int`, *optional*, defaults to 4): train the runs of tiers 1..`tier` (0: none, report what is done).
        workers (`int`, *optional*, defaults to 1): processes sharing the runs (`cal_train.execute`).
    """
    from vcontrast.toy.cal_report import noise_analysis, noise_table, plot_deltas

    start = time.perf_counter()
    runs = noise_runs(budget)
    folder, base, records = execute(budget, work_dir, model, runs, tier, workers)
    names = [cell_name(n, r) for n, r in cells(budget)]
    analysis = noise_analysis(records, budget, names)
    betas = {p.stem: json.loads(p.read_text()) for p in sorted((folder / "beta").glob("*.json"))}
    timing = _timing(records, folder, time.perf_counter() - start)
    incomplete = _incomplete(runs, records, budget)
    realised = {}
    for name in names[1:]:
        rows = [r for r in records if r["cell"] == name and r.get("n_eligible")]
        if rows:
            eligible = sum(r["n_eligible"] for r in rows)
            realised[name] = {
                "eligible_mean": eligible / len(rows),
                "realised_rate": sum(r["n_corrupted"] for r in rows) / eligible,  # pooled over the runs
            }
    beta_text = ", ".join(f"{k}: {v['beta']:.2f} (p90 {v['p90']:.2f})" for k, v in betas.items())
    noise_text = ", ".join(
        f"{k}: {v['eligible_mean']:.0f}, {100 * v['realised_rate']:.1f}%" for k, v in realised.items()
    )
    extra = [
        (
            f"CAL (1, p90) beta per (a, f): {beta_text or 'none yet'}. Noise, eligible examples per pool and "
            f"realised rate: {noise_text or 'none yet'}."
        )
    ]
    references = reference_metrics(budget, folder, base)
    extra += _reference_lines(references, records)
    notes = _notes(timing, incomplete, base, extra)
    table = noise_table(analysis, records, names, {"setup": _setup_line(budget), "notes": notes})
    data = {
        "protocol": __doc__,
        "base": str(base),
        "tier_requested": tier,
        "runs": records,
        "analysis": analysis,
        "betas": betas,
        "noise": realised,
        "references": references,
        "incomplete": incomplete,
        "timing": timing,
    }
    series = {
        METHODS[m]: (lambda a, c, k, m=m: a["cells"][f"{c}/{k}/{m}"].get("delta")) for m in METHODS if m != "mle"
    }
    title = f"cal_noise: method − MLE, mean and 95% t-interval over seed pairs ({len(records)} runs complete)"
    return table, data, partial(plot_deltas, analysis=analysis, cells=names, series=series, title=title)


def run_cal_scratch(
    budget: ExperimentBudget, work_dir: Path, model: str | Path | None = None, tier: int = 1, workers: int = 1
) -> tuple[str, dict, Any]:
    """Run "cal_scratch" (E3, see the module docstring); returns `(markdown, raw numbers, plot function)`.

    Args:
        budget (`ExperimentBudget`): as "cal_noise"; `scratch_pairs` are its seed pairs.
        work_dir (`Path`): runs go to `work_dir/cal` (the aligned runs are those of "cal_noise").
        model (`str | Path`, *optional*): the stage-1 model folder (default `DEFAULT_BASE`).
        tier (`int`, *optional*, defaults to 1): every run of "cal_scratch" is tier 1; 0 reports what is done.
        workers (`int`, *optional*, defaults to 1): processes sharing the runs (`cal_train.execute`).
    """
    from vcontrast.toy.cal_report import plot_deltas, scratch_analysis, scratch_table

    start = time.perf_counter()
    runs = scratch_runs(budget)
    folder, base, records = execute(budget, work_dir, model, runs, tier, workers)
    names = list(dict.fromkeys(r.cell for r in runs))
    analysis = scratch_analysis(records, budget, names)
    scratch = [r for r in records if r["protocol"] == "scratch"]
    timing = _timing(scratch, folder, time.perf_counter() - start, alignment=False)
    incomplete = _incomplete(runs, records, budget)
    setup = (
        f'MLE and CAL (1, 5), IT on the pools of "cal_noise" for (a, f) in '
        f"{[list(p) for p in budget.scratch_pairs]}, {budget.finetune_steps} steps: from the stage-1 model (random "
        "projector, 'scratch') and after the alignment stage ('aligned', the runs of \"cal_noise\")."
    )
    notes = _notes(timing, incomplete, base, ["Runs complete and compute time count the from-scratch runs only."])
    table = scratch_table(analysis, names, {"setup": setup, "notes": notes})
    data = {"base": str(base), "runs": records, "analysis": analysis, "incomplete": incomplete, "timing": timing}
    series = {
        "aligned": lambda a, c, k: a[f"{c}/{k}"]["aligned"],
        "scratch": lambda a, c, k: a[f"{c}/{k}"]["scratch"],
    }
    title = "cal_scratch: CAL (1, 5) − MLE after alignment and from scratch"
    return table, data, partial(plot_deltas, analysis=analysis, cells=names, series=series, title=title)
