"""The toy world's experiments: where CAL and CRG are measured on data whose truth is known (DESIGN.md §3).

`run_experiment(name, out_dir, budget)` runs one experiment end to end and writes, under `out_dir`:

```
out_dir/
  {name}.md     the results as markdown tables (what `vcontrast toy experiment NAME` prints)
  {name}.json   every raw number: per-seed / per-run values, the budget, timings, library versions
  {name}.png    the plot (matplotlib, Agg backend; skipped with a warning if matplotlib is missing)
```

Experiments (`EXPERIMENTS`):

- "cal_noise" (`vcontrast.toy.exp_cal`, PLAN.md's E2): CAL vs MLE under three kinds of label noise (whole-answer
  swap, one attribute replaced, prior-aligned hallucination), in an IT stage on a fixed pool of the task mix after a
  shared projector-only alignment stage, 3 alignment x 2 fine-tuning seeds; attribute-token NLL, hallucination rate
  and prior-inconsistent VQA accuracy on clean test data. Runs in tiers (`tier=`), resumable.
- "cal_scratch" (`vcontrast.toy.exp_cal`, PLAN.md's E3): the same CAL-vs-MLE comparison without the alignment
  stage (IT from the stage-1 model with its random projector), against the aligned runs of the same seed pairs.
- "crg" (`vcontrast.toy.exp_crg`): experiment E1 of docs/results/PLAN.md, the plain toy model vs overlay, CRG,
  CRG + overlay and VCD on spatial choice, swap choice, image-text match and region VQA (annotated regions), and
  referring expressions re-ranked by CRG's log-ratio vs crops, random and oracle (annotated and proposed boxes,
  intrinsic and relational expressions); paired bootstrap intervals; the masking ablation as an extra.
- "cal_crg" (`vcontrast.toy.exp_crg`): the models of "cal_noise" (CAL and MLE, N1 at one noise rate, alignment
  seed 0) with and without CRG, on caption tasks.

Training runs and evaluation folders go to `work_dir` (default `out/experiments`), the results to
`work_dir/NAME` unless `out_dir` says otherwise; rerunning an experiment with the
same budget reuses what is there (finished training runs return at once, evaluations resume). Nothing is tuned:
CRG's alpha is 1 and CAL's (alpha, beta, window) are (1, 5, 3), the papers' defaults; all data are drawn from
fixed seeds, test data from the balanced "test" split, training data from the biased "train" split.

Examples:

```python
>>> from vcontrast.toy.experiments import run_experiment
>>> result = run_experiment("crg", out_dir="docs/results", budget="full")  # doctest: +SKIP
>>> print(result.table)  # doctest: +SKIP
```
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcontrast.atomic import atomic_path, write_text

logger = logging.getLogger(__name__)

__all__ = [
    "BUDGETS",
    "EXPERIMENTS",
    "ExperimentBudget",
    "ExperimentResult",
    "get_budget",
    "markdown_table",
    "paired_bootstrap",
    "run_experiment",
    "summarize",
]

EXPERIMENTS: dict[str, str] = {
    "cal_noise": "vcontrast.toy.exp_cal:run_cal_noise",
    "cal_scratch": "vcontrast.toy.exp_cal:run_cal_scratch",
    "crg": "vcontrast.toy.exp_crg:run_crg",
    "cal_crg": "vcontrast.toy.exp_crg:run_cal_crg",
}
DEFAULT_WORK_DIR = Path("out/experiments")


@dataclass
class ExperimentBudget:
    """How much compute an experiment gets: steps, seeds, test items.

    The defaults are the pre-registered numbers of docs/results/PLAN.md (the "full" budget).

    Args:
        seeds (`tuple[int, ...]`, *optional*, defaults to `(0, 1)`): fine-tuning seeds f of "cal_noise" (with each
            alignment seed a, a pair (a, f) draws its own IT pool, noise and batch order).
        align_seeds (`tuple[int, ...]`, *optional*, defaults to `(0, 1, 2)`): alignment seeds a of "cal_noise": each
            is one projector-only PT run from the stage-1 model.
        noise_types (`tuple[str, ...]`, *optional*, defaults to `("N1", "N2", "N3")`): label noise types
            (`vcontrast.toy.noise`).
        noise_rates (`tuple[float, ...]`, *optional*, defaults to `(0.0, 0.3, 0.6)`): fractions of the eligible
            examples corrupted; which runs of "cal_noise" each tier trains is `vcontrast.toy.cal_runs.tier`.
        align_steps (`int`, *optional*, defaults to 600): steps of each alignment (PT) run, the recipe's PT stage.
        finetune_steps (`int`, *optional*, defaults to 600): steps of each IT run on a fixed pool.
        batch_size (`int`, *optional*, defaults to 32): training batch size.
        align_lr (`float`, *optional*, defaults to 1e-3): peak learning rate of alignment (the recipe's PT).
        finetune_lr (`float`, *optional*, defaults to 5e-4): peak learning rate of the IT runs.
        pool_size (`int`, *optional*, defaults to 1600): train-split IT examples in the fixed pool of each (a, f).
        n_test (`int`, *optional*, defaults to 300): clean test items per metric of "cal_noise" / "cal_scratch", and
            items per task of "cal_crg".
        n_items (`int`, *optional*, defaults to 500): test items per task of "crg" (PLAN.md's E1).
        eval_batch_size (`int`, *optional*, defaults to 16): items per model call in evaluation.
        max_new_tokens (`int`, *optional*, defaults to 48): generation length (a 4-object caption is ~40 tokens).
        cal_crg_noise (`float`, *optional*, defaults to 0.3): the N1 noise rate whose CAL and MLE models "cal_crg"
            uses (alignment seed 0).
        scratch_pairs (`tuple[tuple[int, int], ...]`, *optional*, defaults to `((0, 0), (0, 1), (1, 0))`): the
            (a, f) pairs of "cal_scratch" (each among `align_seeds` x `seeds`).
        stage1_model (`dict`, *optional*): `toy_config` sizes of a stage-1 model (text-trained LM + vision tower)
            built in the work folder with `stage1_steps` steps per stage, instead of reading one (`--base`): for
            tests and timings, where no trained model is at hand.
        stage1_steps (`int`, *optional*, defaults to 2): LM and vision steps of that built stage-1 model.
        bootstrap (`int`, *optional*, defaults to 10000): paired bootstrap resamples for confidence intervals
            (PLAN.md: 10,000).
        num_threads (`int`, *optional*, defaults to 2): `torch.set_num_threads` for the run.
    """

    seeds: tuple[int, ...] = (0, 1)
    align_seeds: tuple[int, ...] = (0, 1, 2)
    noise_types: tuple[str, ...] = ("N1", "N2", "N3")
    noise_rates: tuple[float, ...] = (0.0, 0.3, 0.6)
    align_steps: int = 600
    finetune_steps: int = 600
    batch_size: int = 32
    align_lr: float = 1e-3
    finetune_lr: float = 5e-4
    pool_size: int = 1600
    n_test: int = 300
    n_items: int = 500
    eval_batch_size: int = 16
    max_new_tokens: int = 48
    cal_crg_noise: float = 0.3
    scratch_pairs: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0))
    stage1_model: dict | None = None
    stage1_steps: int = 2
    bootstrap: int = 10000
    num_threads: int | None = 2

    def __post_init__(self) -> None:
        from vcontrast.toy.noise import NOISE_TYPES

        self.seeds, self.align_seeds = tuple(self.seeds), tuple(self.align_seeds)
        self.noise_types, self.noise_rates = tuple(self.noise_types), tuple(float(r) for r in self.noise_rates)
        self.scratch_pairs = tuple(tuple(p) for p in self.scratch_pairs)
        for name in ("seeds", "align_seeds"):
            value = getattr(self, name)
            if not value or len(set(value)) != len(value) or not all(_is_count(v, 0) for v in value):
                raise ValueError(f"`{name}` (={value}) must be distinct non-negative ints, at least one")
        if not self.noise_types or not set(self.noise_types) <= set(NOISE_TYPES):
            raise ValueError(f"`noise_types` (={self.noise_types}) must be some of {NOISE_TYPES}")
        if not self.noise_rates or not all(0 <= r < 1 for r in self.noise_rates):
            raise ValueError(f"`noise_rates` (={self.noise_rates}) must be in [0, 1), at least one")
        if self.cal_crg_noise not in self.noise_rates:
            raise ValueError(
                f"`cal_crg_noise` (={self.cal_crg_noise}) must be one of `noise_rates` {self.noise_rates}"
            )
        pairs = {(a, f) for a in self.align_seeds for f in self.seeds}
        if any(len(p) != 2 or p not in pairs for p in self.scratch_pairs):
            raise ValueError(
                f"`scratch_pairs` (={self.scratch_pairs}) must be (a, f) pairs of `align_seeds` x `seeds`"
            )
        for name in ("align_steps", "finetune_steps", "batch_size", "pool_size", "n_test", "n_items"):
            if not _is_count(getattr(self, name), 1):
                raise ValueError(f"`{name}` (={getattr(self, name)!r}) must be a positive int")
        for name in ("eval_batch_size", "max_new_tokens", "bootstrap", "stage1_steps"):
            if not _is_count(getattr(self, name), 1):
                raise ValueError(f"`{name}` (={getattr(self, name)!r}) must be a positive int")
        if not (self.align_lr > 0 and self.finetune_lr > 0):
            raise ValueError(f"learning rates (={self.align_lr}, {self.finetune_lr}) must be positive")

    def to_dict(self) -> dict:
        """A JSON-ready dict of the fields."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _is_count(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


BUDGETS: dict[str, ExperimentBudget] = {
    # Seconds: a handful of steps and items on a tiny stage-1 model built on the spot; checks the plumbing only.
    "tiny": ExperimentBudget(
        seeds=(0, 1),
        align_seeds=(0,),
        align_steps=2,
        finetune_steps=10,  # reaches one text-only replay step (every 10th)
        batch_size=4,
        pool_size=64,  # enough for a few N3-eligible examples in every pool
        n_test=4,
        n_items=8,
        eval_batch_size=4,
        max_new_tokens=6,
        scratch_pairs=((0, 0), (0, 1)),
        stage1_model={
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "vision_hidden_size": 32,
            "vision_layers": 2,
        },
        bootstrap=20,
        num_threads=1,
    ),
    # docs/results/PLAN.md's numbers: "cal_noise" is ~200 runs of ~10-15 min on 2 CPU cores, run in tiers.
    "full": ExperimentBudget(),
}


def get_budget(budget: str | ExperimentBudget) -> ExperimentBudget:
    """A budget by name (`BUDGETS`) or as given."""
    if isinstance(budget, ExperimentBudget):
        return budget
    if budget not in BUDGETS:
        raise ValueError(f"`budget` (={budget!r}) must be one of {sorted(BUDGETS)} or an ExperimentBudget")
    return BUDGETS[budget]


@dataclass
class ExperimentResult:
    """What an experiment produced.

    Args:
        name (`str`): the experiment.
        table (`str`): markdown tables of the results (also in `{name}.md`).
        data (`dict`): the raw numbers (also in `{name}.json`).
        files (`list[Path]`): the files written.
    """

    name: str
    table: str
    data: dict
    files: list[Path] = field(default_factory=list)


def run_experiment(
    name: str,
    out_dir: str | Path | None = None,
    budget: str | ExperimentBudget = "full",
    work_dir: str | Path = DEFAULT_WORK_DIR,
    model: str | Path | None = None,
    gates: str | Path | None = None,
    **options: Any,
) -> ExperimentResult:
    """Run one toy experiment end to end and write its table, plot and raw numbers into `out_dir`.

    Args:
        name (`str`): a key of `EXPERIMENTS` (see the module docstring).
        out_dir (`str | Path`, *optional*): where `{name}.md/.json/.png` go; defaults to `work_dir / name`
            (`out/experiments/NAME`), so that a run never overwrites the committed `docs/results` unless asked to.
        budget (`str | ExperimentBudget`, *optional*, defaults to `"full"`): a name of `BUDGETS` or a budget.
        work_dir (`str | Path`, *optional*, defaults to `"out/experiments"`): training runs and evaluation folders;
            a rerun with the same budget reuses them. One budget per folder (a different one raises).
        model (`str | Path`, *optional*): a toy model folder. "crg" evaluates it (default: the shipped one);
            "cal_noise", "cal_scratch" and "cal_crg" start from it as the stage-1 model (text-trained LM and
            vision tower; default `vcontrast.toy.cal_inputs.DEFAULT_BASE`, "out/toy-testbed/vision").
        gates (`str | Path`, *optional*): a `vcontrast toy gates --json` file of the test-bed model. The report then
            names, next to each claim, the gates it rests on that failed (`vcontrast.toy.gates.CLAIM_GATES`), as
            PLAN.md requires; without it, the report says the gates were not given.
        **options: experiment-specific keyword arguments ("cal_noise", "cal_scratch": `tier`, `workers`).

    Returns:
        `ExperimentResult`: the tables, the raw numbers and the files written.

    Examples:

    ```python
    >>> result = run_experiment("cal_noise", out_dir="/tmp/results", budget="tiny", work_dir="/tmp/work")
    >>> sorted(p.name for p in result.files)
    ['cal_noise.json', 'cal_noise.md', 'cal_noise.png']
    ```
    """
    import torch

    if name not in EXPERIMENTS:
        raise ValueError(f"`name` (={name!r}) must be one of {list(EXPERIMENTS)}")
    budget = get_budget(budget)
    if budget.num_threads is not None:
        torch.set_num_threads(budget.num_threads)
    work_dir = Path(work_dir)
    out_dir = work_dir / name if out_dir is None else Path(out_dir)
    module, _, attr = EXPERIMENTS[name].partition(":")
    fn = getattr(importlib.import_module(module), attr)
    gate_metrics, gate_source = _read_gates(gates)
    start = time.perf_counter()
    table, data, plot = fn(budget=budget, work_dir=work_dir, model=model, **options)
    from vcontrast.toy.gates import claims_gates_table

    claims = claims_gates_table(name, gate_metrics, gate_source)
    if claims:
        table = table.rstrip() + "\n\n" + claims + "\n"
    if claims and gate_metrics is not None:
        data["gates"] = {"source": gate_source, "metrics": gate_metrics}
    data = {
        "experiment": name,
        "budget": budget.to_dict(),
        "wall_s": round(time.perf_counter() - start, 1),
        "versions": _versions(),
        **data,
    }
    return write_result(out_dir, name, table, data, plot)


def _read_gates(path: str | Path | None) -> tuple[dict[str, float] | None, str]:
    # The gate metrics of a `vcontrast toy gates --json` file, and a description of where they were measured.
    if path is None:
        return None, ""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"`gates` (={str(path)!r}) is not a file: give a `vcontrast toy gates --json` output")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        metrics = {key: float(value) for key, value in record["metrics"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a `vcontrast toy gates --json` output ({e})") from e
    from vcontrast.toy.gates import GATES

    missing = [gate.key for gate in GATES if gate.key not in metrics]
    if missing:
        raise ValueError(f"{path} lacks the gate metrics {missing}")
    source = f"the {record.get('split', '?')} split (n = {record.get('n', '?')}) with model {record.get('model', '?')}"
    return metrics, f"{source}, `{path.name}`"


def write_result(
    out_dir: Path, name: str, table: str, data: dict, plot: Callable[[Any], None] | None
) -> ExperimentResult:
    """Write `{name}.md`, `{name}.json` and (given a `plot(figure_path)` function and matplotlib) `{name}.png`."""
    files = [out_dir / f"{name}.md", out_dir / f"{name}.json"]
    write_text(files[0], table.rstrip() + "\n")
    write_text(files[1], json.dumps(data, indent=1, default=_json_default) + "\n")
    if plot is not None:
        try:
            import matplotlib
        except ImportError:
            logger.warning("matplotlib is not installed (pip install 'vcontrast[plot]'): no plot for %s", name)
        else:
            matplotlib.use("Agg")
            path = out_dir / f"{name}.png"
            with atomic_path(path) as tmp:
                plot(tmp)
            files.append(path)
    return ExperimentResult(name=name, table=table, data=data, files=files)


def check_work_dir(folder: Path, config: dict) -> None:
    """Create `folder` and record `config` in `folder/config.json`; raise if it already holds another config, so
    runs of different budgets never mix."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    config = json.loads(json.dumps(config, default=_json_default))
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != config:
            diff = {
                k: (previous.get(k), config.get(k))
                for k in set(previous) | set(config)
                if previous.get(k) != config.get(k)
            }
            raise ValueError(
                f"{folder} holds runs of another configuration (before, now): {diff}; use another `work_dir` or "
                "delete the folder"
            )
    else:
        path.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Statistics and tables
# ---------------------------------------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and count of a list of numbers."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarize")
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
        "n": int(x.size),
    }


def paired_bootstrap(
    metric: Callable[[np.ndarray], float], n_items: int, resamples: int, seed: int = 0
) -> tuple[float, float]:
    """A 95% percentile interval of a statistic of items, by resampling the items with replacement.

    Args:
        metric (`Callable[[np.ndarray], float]`): the statistic of a resample, given as item indices (e.g. the
            difference of two methods' accuracies on the same items: a paired bootstrap).
        n_items (`int`): number of items.
        resamples (`int`): bootstrap resamples.
        seed (`int`, *optional*, defaults to 0): seeds the resampling.

    Returns:
        `tuple[float, float]`: the 2.5th and 97.5th percentiles (resamples where `metric` raises
        `UndefinedMetricError`, e.g. an AUROC with one class, are skipped, and their number logged).

    Examples:

    ```python
    >>> a, b = np.array([1, 1, 0, 1]), np.array([0, 1, 0, 0])
    >>> low, high = paired_bootstrap(lambda i: a[i].mean() - b[i].mean(), 4, 200)
    ```
    """
    from vcontrast.bench.metrics import UndefinedMetricError

    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        index = rng.integers(0, n_items, n_items)
        try:
            stats.append(metric(index))
        except UndefinedMetricError:  # only an undefined statistic; any other error is a bug and propagates
            continue
    if len(stats) < resamples:
        logger.warning("paired bootstrap: %d of %d resamples undefined, skipped", resamples - len(stats), resamples)
    if not stats:
        return math.nan, math.nan
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned.

    Examples:

    ```python
    >>> print(markdown_table(["task", "acc"], [["spatial", "51.0"]]))
    | task | acc |
    |:--|--:|
    | spatial | 51.0 |
    ```
    """
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|:--|" + "--:|" * (len(headers) - 1)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float, digits: int = 1) -> str:
    """A fraction as a percentage string ("97.4"); "n/a" for NaN."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}"


def pct_spread(stats: dict[str, float]) -> str:
    """`summarize` output as "mean ± std" in percent."""
    return f"{pct(stats['mean'])} ± {pct(stats['std'])}"


def pct_delta(value: float, interval: tuple[float, float] | None = None) -> str:
    """A signed difference in percentage points, with its interval: "+1.5 [-0.5, +3.5]"."""
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{100 * value:+.1f}"
    if interval is not None and not any(math.isnan(v) for v in interval):
        text += f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
    return text


def _versions() -> dict[str, str]:
    import platform

    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {value!r}")
