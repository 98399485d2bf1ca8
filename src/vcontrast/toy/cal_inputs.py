"""The inputs of a CAL run ("cal_noise", "cal_scratch", "cal_crg"): the shared training folder and the stage-1 model,
the fixed IT pool of a seed pair and its batch order, each method's loss and CAL (1, p90)'s beta."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from vcontrast.atomic import write_text
from vcontrast.toy.cal_report import METHODS
from vcontrast.toy.experiments import ExperimentBudget, check_work_dir

__all__ = [
    "DEFAULT_BASE",
    "cal_work_dir",
    "clean_pool",
    "method_loss",
    "p90_beta",
    "pool_batches",
]

DEFAULT_BASE = Path("out/toy-testbed/vision")


def _file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cal_work_dir(budget: ExperimentBudget, work_dir: Path, base: str | Path | None) -> tuple[Path, Path]:
    """The training folder shared by "cal_noise", "cal_scratch" and "cal_crg" (`work_dir/cal`), guarded against
    mixing budgets or stage-1 models, and the stage-1 model folder (built there for a budget with `stage1_model`).

    Returns:
        `tuple[Path, Path]`: `(folder, base)`.
    """
    folder = Path(work_dir) / "cal"
    fields = ("align_steps", "finetune_steps", "batch_size", "align_lr", "finetune_lr", "pool_size", "n_test")
    config: dict[str, Any] = {k: getattr(budget, k) for k in fields} | {"max_new_tokens": budget.max_new_tokens}
    if budget.stage1_model is not None:
        if base is not None:
            raise ValueError(f"the budget builds its own stage-1 model (`stage1_model`); got a base model too: {base}")
        config["stage1"] = {"model": budget.stage1_model, "steps": budget.stage1_steps}
        check_work_dir(folder, config)
        return folder, _build_stage1(folder / "stage1", budget)
    base = Path(base) if base is not None else DEFAULT_BASE
    weights = base / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(
            f"no stage-1 model at {base}: pass the recipe's vision stage (e.g. out/toy-testbed/vision, written by "
            "`vcontrast toy train --out out/toy-testbed`) as --base"
        )
    check_work_dir(folder, config | {"base_sha256": _file_digest(weights)})
    return folder, base


def _build_stage1(folder: Path, budget: ExperimentBudget) -> Path:
    # A stage-1 model as the recipe makes it (LM on text, then the vision tower), at the budget's size and steps.
    from vcontrast.toy.train import pretrain_vision, train

    common = {"steps": budget.stage1_steps, "batch_size": budget.batch_size, "num_threads": budget.num_threads}
    lm = train(folder / "lm", stage="lm", trainable="lm", model_kwargs=budget.stage1_model, warmup=1, **common)
    return pretrain_vision(folder / "vision", init=lm, log_every=budget.stage1_steps, **common)


def clean_pool(size: int, a: int, f: int) -> list[dict]:
    """The fixed IT pool of seed pair (a, f): `size` train-split examples of `IT_MIX` (full-difficulty spatial),
    each with its toy task name (`vcontrast.toy.noise.pool_example`)."""
    from vcontrast.toy.noise import pool_example
    from vcontrast.toy.train import IT_MIX, task_examples

    rng = random.Random(f"cal-pool-a{a}-f{f}")
    seeds = [rng.randrange(2**31) for _ in range(size)]
    return [pool_example(ex) for ex in task_examples(seeds, stage="it", split="train", mix=IT_MIX, rng=rng)]


def pool_batches(pool: Sequence[dict], a: int, f: int) -> Callable[[int, int], list[dict]]:
    """The training data of one run as `train(data=...)` takes it: a function of (step, batch_size).

    Every `TEXT_REPLAY_EVERY`-th step (9, 19, ...) is a batch of fresh text-only train examples (seeded by (a, f) and
    the step); the other steps walk through `pool` in epochs, each shuffled by (a, f) and the epoch, so two pools of
    the same length (the clean and a noisy one) are visited in the same order.
    """
    from vcontrast.toy.train import TEXT_REPLAY_EVERY, task_examples

    if not pool:
        raise ValueError("`pool` (=[]) holds no examples")
    orders: dict[int, list[int]] = {}

    def batch(step: int, batch_size: int) -> list[dict]:
        if step % TEXT_REPLAY_EVERY == TEXT_REPLAY_EVERY - 1:
            rng = random.Random(f"cal-replay-a{a}-f{f}-{step}")
            seeds = [rng.randrange(2**31) for _ in range(batch_size)]
            return task_examples(seeds, stage="lm", split="train", rng=rng)
        start = (step - step // TEXT_REPLAY_EVERY) * batch_size  # pool examples used by the earlier pool steps
        out = []
        for k in range(start, start + batch_size):
            epoch, i = divmod(k, len(pool))
            if epoch not in orders:
                orders[epoch] = random.Random(f"cal-order-a{a}-f{f}-{epoch}").sample(range(len(pool)), len(pool))
            out.append(pool[orders[epoch][i]])
        return out

    return batch


def method_loss(method: str, beta: float | None = None) -> Callable:
    """The training loss of a method: MLE (`mle_loss`, also for "oracle") or `cal_loss` with the method's
    `CALConfig` (window 3). A text-only batch (no `pixel_values`) always gets MLE.

    Args:
        method (`str`): a key of `METHODS`.
        beta (`float`, *optional*): the upper clamp of "cal_p90" (required there).
    """
    from vcontrast.cal import CALConfig

    if method not in METHODS:
        raise ValueError(f"`method` (={method!r}) must be one of {list(METHODS)}")
    if method == "cal_p90" and beta is None:
        raise ValueError("method 'cal_p90' needs `beta`")
    configs = {
        "cal": CALConfig(alpha=1.0, beta=5.0, window=3),
        "cal0": CALConfig(alpha=0.0, beta=5.0, window=3),
        "cal_p90": CALConfig(alpha=1.0, beta=beta, window=3) if beta is not None else None,
    }
    return partial(_loss, config=configs.get(method))


def _loss(model, batch, config):
    from vcontrast.cal import cal_loss
    from vcontrast.toy.train import mle_loss

    if config is None or batch.get("pixel_values") is None:
        return mle_loss(model, batch)
    return cal_loss(model, batch, config).loss


def p90_beta(budget: ExperimentBudget, folder: Path, aligned: Path, a: int, f: int, pool: Sequence[dict]) -> dict:
    """CAL (1, p90)'s beta for seed pair (a, f): the 90th percentile of the CAL deltas of the clean pool's label
    tokens under the aligned model, cached in `folder/beta/a{a}-f{f}.json`. Raised to alpha + 0.01 = 1.01 if it is
    lower (`CALConfig` needs beta > alpha); both values are recorded."""
    import torch

    from vcontrast.cal import CALConfig, cal_deltas
    from vcontrast.toy.model import load
    from vcontrast.toy.train import collate

    path = folder / "beta" / f"a{a}-f{f}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, processor = load(aligned)
    deltas = []
    for start in range(0, len(pool), budget.eval_batch_size):
        batch = collate(processor, pool[start : start + budget.eval_batch_size])
        delta, mask = cal_deltas(model, batch, CALConfig())
        deltas.append(delta[mask])
    values = torch.cat(deltas).double()
    p90 = float(torch.quantile(values, 0.9))
    record = {
        "p90": p90,
        "beta": max(p90, 1.01),
        "median": float(values.median()),
        "n_tokens": int(values.numel()),
        "aligned_model": str(aligned),
    }
    write_text(path, json.dumps(record, indent=1) + "\n")
    return record
