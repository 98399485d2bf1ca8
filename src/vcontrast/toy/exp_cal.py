"""Experiments "cal_noise" (E2) and "cal_scratch" (E3) of docs/results/PLAN.md: CAL vs MLE under label noise.

Protocol ("cal_noise"):

1. Alignment, seed a (`align_model`): the recipe's projector-only PT (`train(stage="pt", trainable="projector")`,
   `budget.align_steps` steps at `budget.align_lr`) from the recipe's stage-1 model (`base`: the folder holding the
   text-pretrained LM and the pretrained vision tower, the recipe's `OUT/vision`, default `DEFAULT_BASE`). For
   a = 0, a finished `OUT/pt` next to it (the test bed's own PT, same steps, seed 0, same LM and tower) is reused.
2. IT from the aligned model, fine-tuning seed f: a fixed pool of `budget.pool_size` train-split examples of the IT
   task mix (`IT_MIX`, full-difficulty spatial, no curriculum), drawn from (a, f); projector + LM trained,
   `budget.finetune_steps` steps of `budget.finetune_batch_size` at `budget.finetune_lr`; every
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

Run order (`tier`): 1 = MLE and CAL (1, 5) at 0% and N2, N3 at the highest rate; 2 = the other methods at those
cells, and N1 at the highest rate; 3 = the lower non-zero rates, every method. `tier=k` trains tiers 1..k (0: none,
report only); the report covers every completed run on disk and lists the incomplete cells. Every run is resumable: a
finished run folder (weights + `metrics.json`) is reused, an interrupted one resumes from its checkpoint.

"cal_scratch" (E3): MLE and CAL (1, 5) at 0% and N2 at the highest rate, for `budget.scratch_pairs`, trained from
the stage-1 model itself (random projector) with the same pools, steps and learning rate; the aligned runs of the
same cells and pairs (shared with "cal_noise") are trained too if missing, and the report compares the two
protocols' CAL - MLE differences (H3: smaller from scratch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from vcontrast.atomic import write_text
from vcontrast.toy.cal_inputs import cal_work_dir, clean_pool, method_loss, p90_beta, pool_batches
from vcontrast.toy.cal_report import METHODS
from vcontrast.toy.cal_runs import TIER1_METHODS, Run, cell_name, cells, noise_runs, scratch_runs, tier
from vcontrast.toy.experiments import ExperimentBudget

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "align_model",
    "cell_models",
    "execute",
    "run_cal_noise",
    "run_cal_scratch",
]

SAVE_EVERY = 100  # checkpoint interval of the IT runs (a run resumes from its last checkpoint)


# ---------------------------------------------------------------------------------------------------------------
# Stage-1 model, alignment, pools
# ---------------------------------------------------------------------------------------------------------------


def _warmup(steps: int) -> int:
    # The recipe's 100 warm-up steps for its 600-step stages; proportionally fewer for short (test) runs.
    return min(100, max(1, steps // 6))


def _recipe_pt(base: Path, budget: ExperimentBudget) -> Path | None:
    # The test bed's own PT (a = 0): BASE/../pt, if it is a finished seed-0 projector-only PT of the budget's length
    # with the recipe's default learning rate and batch size, whose weights outside the projector are base's.
    import inspect

    from safetensors import safe_open

    from vcontrast.toy.train import train_recipe

    pt = base.parent / "pt"
    state_file = pt / "train_state.json"
    if budget.stage1_model is not None or not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    defaults = inspect.signature(train_recipe).parameters
    if (state.get("stage"), state.get("seed"), state.get("step"), state.get("trainable")) != (
        "pt",
        0,
        budget.align_steps,
        "projector",
    ) or (budget.align_lr, budget.batch_size) != (defaults["lr"].default, defaults["batch_size"].default):
        return None
    with safe_open(base / "model.safetensors", "pt") as a, safe_open(pt / "model.safetensors", "pt") as b:
        keys = [k for k in a.keys() if "multi_modal_projector" not in k]  # noqa: SIM118 (safe_open is no dict)
        if set(keys) != {k for k in b.keys() if "multi_modal_projector" not in k}:  # noqa: SIM118
            return None
        if not all(a.get_tensor(k).equal(b.get_tensor(k)) for k in keys):
            return None
    return pt


def align_model(budget: ExperimentBudget, folder: Path, base: Path, a: int) -> Path:
    """The aligned model of seed `a`: the recipe's PT reused for a = 0 when it fits (see the module docstring) and
    no own alignment run of seed 0 was started before (so every run of one experiment folder starts from the same
    aligned model), else `train(stage="pt", trainable="projector")` from `base` into `folder/align/a{a}` (reused
    once finished, resumed if interrupted)."""
    from vcontrast.toy.train import train

    own = folder / "align" / f"a{a}"
    if a == 0 and not own.exists() and (pt := _recipe_pt(base, budget)) is not None:
        return pt
    steps = budget.align_steps
    return train(
        own,
        stage="pt",
        init=base,
        trainable="projector",
        steps=steps,
        batch_size=budget.batch_size,
        lr=budget.align_lr,
        seed=a,
        warmup=_warmup(steps),
        log_every=max(1, min(50, steps // 4)),
        save_every=SAVE_EVERY,
        num_threads=budget.num_threads,
    )


def _train_seconds(model_dir: Path) -> float:
    # Training time over every session of a (possibly resumed) run: `train` logs the time since its own start and
    # the step its session started from, so a new `session_start`, a step that does not advance or a drop in
    # elapsed_s marks a new session; the time after the last log of an interrupted session is lost.
    log = model_dir / "log.jsonl"
    if not log.is_file():
        return math.nan
    total, last, previous = 0.0, 0.0, None
    for line in log.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            elapsed = float(record.get("elapsed_s", 0.0))
            session = (record.get("session_start"), int(record.get("step", 0)))
            if previous is not None and (session[0] != previous[0] or session[1] <= previous[1] or elapsed < last):
                total += last
            last, previous = elapsed, session
    return round(total + last, 1)


def _finished(model_dir: Path, steps: int) -> bool:
    state = model_dir / "train_state.json"
    return state.is_file() and json.loads(state.read_text()).get("step") == steps


class _Executor:
    # Trains and evaluates runs, building each seed pair's pool, aligned model and beta at most once.
    def __init__(self, budget: ExperimentBudget, folder: Path, base: Path) -> None:
        self.budget, self.folder, self.base = budget, folder, base
        self._pools: dict[tuple[int, int], list[dict]] = {}
        self._tests: dict | None = None

    def pool(self, a: int, f: int) -> list[dict]:
        if (a, f) not in self._pools:
            self._pools = {(a, f): clean_pool(self.budget.pool_size, a, f)}  # one pair at a time in memory
        return self._pools[a, f]

    def tests(self) -> dict:
        from vcontrast.toy.cal_eval import clean_test_sets

        if self._tests is None:
            self._tests = clean_test_sets(self.budget.n_test)
        return self._tests

    def data(self, run: Run) -> tuple[list[dict], dict]:
        from vcontrast.toy.noise import apply_noise

        pool = self.pool(run.a, run.f)
        if run.rate == 0:
            return pool, {"n_pool": len(pool), "n_eligible": 0, "n_corrupted": 0, "realised_rate": 0.0}
        noisy, corrupted, eligible = apply_noise(pool, run.noise, run.rate, seed=f"a{run.a}-f{run.f}")
        stats = {
            "n_pool": len(pool),
            "n_eligible": len(eligible),
            "n_corrupted": len(corrupted),
            "realised_rate": len(corrupted) / len(eligible) if eligible else math.nan,
        }
        if run.method == "oracle":
            dropped = set(corrupted)
            noisy = [ex for i, ex in enumerate(noisy) if i not in dropped]
        return noisy, stats

    def train(self, run: Run) -> Path:
        from vcontrast.toy.train import train

        b, out = self.budget, run.folder(self.folder)
        if _finished(out, b.finetune_steps):
            return out
        data, stats = self.data(run)
        init = align_model(b, self.folder, self.base, run.a) if run.protocol == "aligned" else self.base
        beta = None
        if run.method == "cal_p90":
            beta = p90_beta(b, self.folder, init, run.a, run.f, self.pool(run.a, run.f))["beta"]
        info = asdict(run) | {"cell": run.cell, "tier": tier(run, b), "init": str(init), "beta": beta, **stats}
        write_text(out / "run.json", json.dumps(info, indent=1) + "\n")
        logger.info("training %s", info)
        return train(
            out,
            steps=b.finetune_steps,
            batch_size=b.finetune_batch_size,
            lr=b.finetune_lr,
            seed=1000 * run.a + run.f,
            init=init,
            trainable="projector+lm",
            loss_fn=method_loss(run.method, beta),
            data=pool_batches(data, run.a, run.f),
            warmup=_warmup(b.finetune_steps),
            log_every=max(1, min(50, b.finetune_steps // 4)),
            save_every=SAVE_EVERY,
            num_threads=b.num_threads,
        )

    def evaluate(self, run: Run) -> dict:
        from vcontrast.toy.cal_eval import evaluate_clean
        from vcontrast.toy.model import load

        out = run.folder(self.folder)
        path = out / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text())
        start = time.perf_counter()
        model, processor = load(out)
        b = self.budget
        metrics = evaluate_clean(
            model, processor, self.tests(), batch_size=b.eval_batch_size, max_new_tokens=b.max_new_tokens
        )
        metrics["eval_s"] = round(time.perf_counter() - start, 1)
        write_text(path, json.dumps(metrics, indent=1) + "\n")
        return metrics

    def __call__(self, run: Run) -> None:
        if not (run.folder(self.folder) / "metrics.json").is_file():
            self.train(run)
            self.evaluate(run)


def _record(run: Run, folder: Path, budget: ExperimentBudget) -> dict | None:
    # A completed run's numbers (None while it is not complete).
    out = run.folder(folder)
    if not (out / "metrics.json").is_file():
        return None
    info = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    metrics = json.loads((out / "metrics.json").read_text())
    return (
        asdict(run)
        | {"cell": run.cell, "tier": tier(run, budget)}
        | {k: info.get(k) for k in ("beta", "n_eligible", "n_corrupted", "realised_rate")}
        | {"train_s": _train_seconds(out), **metrics}
    )


@contextlib.contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """Hold `folder/train.lock` (the process id) while training, so that two commands never train the same run
    folders at once (e.g. "cal_noise" and "cal_scratch" started side by side); a lock whose process is gone is
    taken over. Reports (`tier=0`) take no lock.

    Raises:
        `ValueError`: another live process holds the lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
                os.kill(pid, 0)  # raises if no such process
            except (ValueError, ProcessLookupError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:  # the process exists (another user's)
                pass
            raise ValueError(
                f"process {pid} is training in {folder} ({path}); run one cal experiment at a time, or --tier 0 to "
                "report the completed runs meanwhile"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise ValueError(f"could not take the training lock {path}")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def execute(
    budget: ExperimentBudget, work_dir: Path, base: str | Path | None, runs: list[Run], max_tier: int
) -> tuple[Path, Path, list[dict]]:
    """Train and evaluate the runs of tiers 1..`max_tier` that are not complete, tier by tier (each complete
    before the next, as PLAN.md's run order says) and within a tier seed pair by seed pair (so that whole pairs
    complete first), then collect every completed run of `runs`.

    Returns:
        `tuple[Path, Path, list[dict]]`: the experiment folder, the stage-1 model and the completed runs' records.
    """
    if not isinstance(max_tier, int) or isinstance(max_tier, bool) or max_tier < 0:
        raise ValueError(f"`tier` (={max_tier!r}) must be an int >= 0 (0: report only)")
    todo = [r for r in runs if tier(r, budget) <= max_tier]
    with training_lock(Path(work_dir) / "cal") if todo else contextlib.nullcontext():
        folder, base = cal_work_dir(budget, work_dir, base)
        executor = _Executor(budget, folder, base)
        for run in sorted(todo, key=lambda r: tier(r, budget)):  # stable: `runs` is ordered by seed pair
            executor(run)
    records = [rec for r in runs if (rec := _record(r, folder, budget)) is not None]
    return folder, base, records


def cell_models(
    budget: ExperimentBudget,
    work_dir: Path,
    base: str | Path | None,
    noise: str,
    rate: float,
    methods: Sequence[str] = TIER1_METHODS,
    a: int = 0,
) -> dict[tuple[str, int], Path]:
    """The trained models of one "cal_noise" cell at alignment seed `a`, for every fine-tuning seed: trains (and
    evaluates) the missing ones. For other experiments that reuse them ("cal_crg").

    Returns:
        `dict[tuple[str, int], Path]`: `(method, f) -> model folder`.
    """
    runs = [Run("aligned", a, f, noise, rate, m) for f in budget.seeds for m in methods]
    with training_lock(Path(work_dir) / "cal"):
        folder, base = cal_work_dir(budget, work_dir, base)
        executor = _Executor(budget, folder, base)
        for run in runs:
            executor(run)
    return {(r.method, r.f): r.folder(folder) for r in runs}


# ---------------------------------------------------------------------------------------------------------------
# The experiments
# ---------------------------------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _timing(records: Sequence[dict], folder: Path, wall_s: float) -> dict[str, Any]:
    # Compute time of the completed runs (training over all its sessions + evaluation) and of the alignment runs.
    train = [r["train_s"] for r in records if _finite(r.get("train_s"))]
    evals = [r["eval_s"] for r in records if _finite(r.get("eval_s"))]
    align = {p.name: _train_seconds(p) for p in sorted((folder / "align").glob("a*"))}
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
    summary = (
        f"Stage-1 model: {base}. Runs complete: {timing['runs_complete']}; compute time so far "
        f"{timing['compute_s_total'] / 3600:.2f} h (training {timing['train_s_per_run']:.0f} s and evaluation "
        f"{timing['eval_s_per_run']:.0f} s per run on average; alignment runs {timing['align_train_s']}); this "
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
        f"{budget.finetune_batch_size} at lr {budget.finetune_lr} (every 10th step text-only, MLE); noise "
        f"{', '.join(budget.noise_types)} at {', '.join(f'{round(100 * r)}%' for r in budget.noise_rates)} of the "
        f"eligible examples; metrics on {budget.n_test} clean test items each."
    )


def run_cal_noise(
    budget: ExperimentBudget, work_dir: Path, model: str | Path | None = None, tier: int = 3
) -> tuple[str, dict, Any]:
    """Run "cal_noise" (E2, see the module docstring); returns `(markdown, raw numbers, plot function)`.

    Args:
        budget (`ExperimentBudget`): steps, seeds, noise types and rates, test items.
        work_dir (`Path`): runs go to `work_dir/cal` (shared with "cal_scratch" and "cal_crg").
        model (`str | Path`, *optional*): the stage-1 model folder (default `DEFAULT_BASE`); must be None for a budget
            that builds its own (`stage1_model`).
        tier (`int`, *optional*, defaults to 3): train the runs of tiers 1..`tier` (0: none, report what is done).
    """
    from vcontrast.toy.cal_report import noise_analysis, noise_table, plot_deltas

    start = time.perf_counter()
    runs = noise_runs(budget)
    folder, base, records = execute(budget, work_dir, model, runs, tier)
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
        "incomplete": incomplete,
        "timing": timing,
    }
    series = {
        METHODS[m]: (lambda a, c, k, m=m: a["cells"][f"{c}/{k}/{m}"].get("delta")) for m in METHODS if m != "mle"
    }
    title = f"cal_noise: method − MLE, mean and 95% t-interval over seed pairs ({len(records)} runs complete)"
    return table, data, partial(plot_deltas, analysis=analysis, cells=names, series=series, title=title)


def run_cal_scratch(
    budget: ExperimentBudget, work_dir: Path, model: str | Path | None = None, tier: int = 1
) -> tuple[str, dict, Any]:
    """Run "cal_scratch" (E3, see the module docstring); returns `(markdown, raw numbers, plot function)`.

    Args:
        budget (`ExperimentBudget`): as "cal_noise"; `scratch_pairs` are its seed pairs.
        work_dir (`Path`): runs go to `work_dir/cal` (the aligned runs are those of "cal_noise").
        model (`str | Path`, *optional*): the stage-1 model folder (default `DEFAULT_BASE`).
        tier (`int`, *optional*, defaults to 1): every run of "cal_scratch" is tier 1; 0 reports what is done.
    """
    from vcontrast.toy.cal_report import plot_deltas, scratch_analysis, scratch_table

    start = time.perf_counter()
    runs = scratch_runs(budget)
    folder, base, records = execute(budget, work_dir, model, runs, tier)
    names = list(dict.fromkeys(r.cell for r in runs))
    analysis = scratch_analysis(records, budget, names)
    timing = _timing([r for r in records if r["protocol"] == "scratch"], folder, time.perf_counter() - start)
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
