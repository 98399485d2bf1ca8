"""The training of the CAL experiments' runs ("cal_noise", "cal_scratch", "cal_crg"): the alignment stage, each run
trained and evaluated once (resumed if interrupted, reused once finished) in PLAN.md's run order, under a lock on
the training folder, and the records of the completed runs.

Several worker processes can share the runs (`execute(workers=N)`): each takes a run (or an alignment) by creating
its lock file and skips those another worker holds. On a CPU, N single-thread workers train N runs in about the
time one N-thread process trains one (measured on the 2-core machine: 1.9-2.1 s per MLE step either way), since
these small models use threads poorly."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from vcontrast.atomic import write_text
from vcontrast.toy.cal_inputs import cal_work_dir, clean_pool, method_loss, p90_beta, pool_batches
from vcontrast.toy.cal_runs import TIER1_METHODS, Run, tier
from vcontrast.toy.experiments import ExperimentBudget

logger = logging.getLogger(__name__)

__all__ = [
    "SAVE_EVERY",
    "align_model",
    "aligned_model_if_ready",
    "cell_models",
    "execute",
    "training_lock",
]

SAVE_EVERY = 100  # checkpoint interval of the IT runs (a run resumes from its last checkpoint)


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
    """The aligned model of seed `a`: the recipe's PT reused for a = 0 when it fits (see `vcontrast.toy.exp_cal`'s
    docstring) and no own alignment run of seed 0 was started before (so every run of one experiment folder starts
    from the same aligned model), else `train(stage="pt", trainable="projector")` from `base` into
    `folder/align/a{a}` (reused once finished, resumed if interrupted)."""
    from vcontrast.toy.train import train

    if (ready := aligned_model_if_ready(budget, folder, base, a)) is not None:
        return ready
    steps = budget.align_steps
    return train(
        folder / "align" / f"a{a}",
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
            batch_size=b.batch_size,
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


def _take_lock(path: Path) -> int | None:
    # Create the lock file `path` holding this process id; None when taken, else the live holder's process id.
    # A lock whose process is gone is stale and taken over.
    path.parent.mkdir(parents=True, exist_ok=True)
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
            return pid
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None
    raise ValueError(f"could not take the lock {path}")


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Hold the lock file `path` (created with this process id) for the block if no live process holds it: yields
    True when held (released on exit), False when another live process holds it. A stale lock (its process is gone)
    is taken over."""
    holder = _take_lock(path)
    try:
        yield holder is None
    finally:
        if holder is None:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """Hold `folder/train.lock` (the process id) while training, so that two commands never train the same run
    folders at once (e.g. "cal_noise" and "cal_scratch" started side by side); a lock whose process is gone is
    taken over. Reports (`tier=0`) take no lock. The worker processes of one command share the runs through
    per-run locks instead (`execute`).

    Raises:
        `ValueError`: another live process holds the lock.
    """
    path = Path(folder) / "train.lock"
    with try_lock(path) as held:
        if not held:
            pid = path.read_text().strip() if path.is_file() else "?"
            raise ValueError(
                f"process {pid} is training in {folder} ({path}); run one cal experiment at a time (--workers N "
                "shares its runs between N processes), or --tier 0 to report the completed runs meanwhile"
            )
        yield


# How often a worker with nothing left to take checks the runs other workers hold: a few file reads, so often enough
# that a worker is not left idle for long (the tiny budget's tier 1 on two workers took 47 s at 30 s, 17 s at 2 s).
POLL_SECONDS = 2.0


def _complete(run: Run, folder: Path) -> bool:
    return (run.folder(folder) / "metrics.json").is_file()


def _work(budget: ExperimentBudget, folder: Path, base: Path, todo: Sequence[Run]) -> None:
    # One worker: tier by tier (each complete before the next), take every run (and the alignment it needs) that no
    # other worker holds; then wait for the runs others hold, and take over any whose worker died.
    executor, aligned = _Executor(budget, folder, base), set()
    for level in sorted({tier(r, budget) for r in todo}):
        pending = [r for r in todo if tier(r, budget) == level]
        while pending := [r for r in pending if not _complete(r, folder)]:
            took = False
            for run in pending:
                if run.protocol == "aligned" and run.a not in aligned:
                    if aligned_model_if_ready(budget, folder, base, run.a) is None:
                        with try_lock(folder / "align" / f"a{run.a}.lock") as held:
                            if not held:
                                continue
                            align_model(budget, folder, base, run.a)
                    aligned.add(run.a)
                with try_lock(run.folder(folder) / "run.lock") as held:
                    if held and not _complete(run, folder):
                        executor(run)
                        took = True
            if not took and any(not _complete(r, folder) for r in pending):
                time.sleep(POLL_SECONDS)


def aligned_model_if_ready(budget: ExperimentBudget, folder: Path, base: Path, a: int) -> Path | None:
    """The aligned model of seed `a` if it is ready (what `align_model` returns without training), else None."""
    own = folder / "align" / f"a{a}"
    if a == 0 and not own.exists() and (pt := _recipe_pt(base, budget)) is not None:
        return pt
    return own if _finished(own, budget.align_steps) else None


def _worker_main(budget: dict, folder: str, base: str, todo: list[dict], output: dict, index: int) -> None:
    # Entry point of a spawned worker process: the parent's output settings (a spawned process does not inherit them:
    # the log level, transformers' progress bars on or off) with a worker tag on each log line, then `_work`.
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=output["level"], format=f"%(asctime)s [worker {index}] %(name)s %(message)s")
    if not output["bars"]:
        hf_logging.disable_progress_bar()
    _exit_with_parent(os.getppid())
    chosen = ExperimentBudget(**budget)
    _work(chosen, Path(folder), Path(base), [Run(**r) for r in todo])


def _exit_with_parent(parent: int, every: float = 5.0) -> None:
    # A worker stops when the command that started it is gone (killed), instead of training on unseen; its run's lock
    # is then stale and the next command takes the run over from its last checkpoint.
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        logger.warning("the parent process %d is gone: this worker stops", parent)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def execute(
    budget: ExperimentBudget,
    work_dir: Path,
    base: str | Path | None,
    runs: list[Run],
    max_tier: int,
    workers: int = 1,
) -> tuple[Path, Path, list[dict]]:
    """Train and evaluate the runs of tiers 1..`max_tier` that are not complete, tier by tier (each complete
    before the next, as PLAN.md's run order says) and within a tier seed pair by seed pair (so that whole pairs
    complete first), then collect every completed run of `runs`.

    Args:
        workers (`int`, *optional*, defaults to 1): processes sharing the runs, each with
            `budget.num_threads // workers` torch threads (at least 1); this process is one of them.

    Returns:
        `tuple[Path, Path, list[dict]]`: the experiment folder, the stage-1 model and the completed runs' records.

    Raises:
        `RuntimeError`: a worker process failed (its error is in the log).
    """
    if not isinstance(max_tier, int) or isinstance(max_tier, bool) or max_tier < 0:
        raise ValueError(f"`tier` (={max_tier!r}) must be an int >= 0 (0: report only)")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` (={workers!r}) must be a positive int")
    todo = [r for r in runs if tier(r, budget) <= max_tier]
    with training_lock(Path(work_dir) / "cal") if todo else contextlib.nullcontext():
        folder, base = cal_work_dir(budget, work_dir, base)
        if todo and workers == 1:
            _work(budget, folder, base, todo)
        elif todo:
            _work_in_parallel(budget, folder, base, todo, workers)
    records = [rec for r in runs if (rec := _record(r, folder, budget)) is not None]
    return folder, base, records


def _work_in_parallel(budget: ExperimentBudget, folder: Path, base: Path, todo: list[Run], workers: int) -> None:
    import multiprocessing

    import torch
    from transformers.utils import logging as hf_logging

    threads = max(1, (budget.num_threads or torch.get_num_threads()) // workers)
    each = dataclasses.replace(budget, num_threads=threads)
    output = {"level": logging.getLogger().getEffectiveLevel(), "bars": hf_logging.is_progress_bar_enabled()}
    args = (each.to_dict(), str(folder), str(base), [asdict(r) for r in todo], output)
    context = multiprocessing.get_context("spawn")  # no forked torch state
    children = [context.Process(target=_worker_main, args=(*args, k), daemon=True) for k in range(1, workers)]
    for child in children:
        child.start()
    torch.set_num_threads(threads)
    try:
        _work(each, folder, base, todo)
    finally:
        for child in children:
            child.join()
    failed = [k for k, child in enumerate(children, 1) if child.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker(s) {failed} of {workers} failed (exit codes in the log above); rerun to resume")


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
