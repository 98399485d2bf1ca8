"""Experiment "cal_noise": CAL vs MLE when a fraction of the image-caption pairs is swapped (CAL paper, Figure 3).

Protocol (DESIGN.md §3), all on toy captions ("describe the image ." -> the canonical caption):

0. Initialisation: the vision tower of the shipped toy model (or of `model`), a random projector and a random LM. The
   toy recipe pretrains that tower on object attributes (`vcontrast.toy.train.pretrain_vision`, the stand-in for
   CLIP) and then keeps it frozen, so it is exactly the tower the recipe's later stages start from; it stays frozen
   here too (LLaVA's setting: a pretrained, frozen CLIP).
1. Alignment: one MLE stage on clean "train"-split captions, fresh ones every step (`align_steps`; projector and LM
   trained, the recipe's PT stage at a smaller budget), shared by every later run, so that CAL starts, as in the
   paper, from a model with a rough image-text alignment (CAL weights tokens by how much the image raises their
   logit, which means nothing for a random model).
2. Noisy fine-tuning from the aligned model (projector and LM), per seed: a fixed pool of `pool_size` "train"
   captions (drawn from the seed), a fraction of which swap captions (`vcontrast.toy.pairs.swap_captions`: a swapped
   image gets another image's caption), cycled for `finetune_steps` steps, once with MLE and once with CAL
   (`vcontrast.cal.cal_loss`, the paper's alpha=1, beta=5, window=3). MLE and CAL of one seed see the same pool,
   noise and batches.
3. Evaluation on `n_test` clean captions of the balanced "test" split: teacher-forced accuracy on the colour, shape
   and position words (`vcontrast.toy.train.caption_word_accuracy`), and two generation metrics of the greedy caption
   (`generate_answers`) against the true one (`caption_f1`): F1 of the multiset of attribute words (colours, shapes,
   sizes, position words), and F1 of the multiset of (colour, shape) objects.

The table gives mean ± sample std over seeds and the paired difference CAL - MLE (mean [min, max] over seeds). The
spread over seeds is that of the fine-tuning stage only (the alignment stage is shared). `budget.from_scratch` adds
the ablation without the alignment stage (same total steps on the noisy pool).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

from vcontrast.toy.experiments import (
    ExperimentBudget,
    check_work_dir,
    markdown_table,
    pct,
    pct_delta,
    pct_spread,
    summarize,
)

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "caption_f1", "caption_metrics", "finetune_run", "noisy_pool", "run_cal_noise"]

METHODS = ("mle", "cal")
METRICS = {"word_acc": "word acc (teacher-forced)", "attr_f1": "attribute F1 (greedy)", "object_f1": "object F1"}
_POSITION_WORDS = ("top", "bottom", "left", "right", "middle")


def caption_f1(prediction: str, reference: str) -> dict[str, float]:
    """Generation metrics of a caption against the true one.

    Args:
        prediction (`str`): the generated caption.
        reference (`str`): the true caption (`vcontrast.toy.grammar.caption`).

    Returns:
        `dict[str, float]`: `"attr_f1"`, the F1 of the multisets of attribute words (colours, shapes, sizes and the
        position words top / bottom / left / right / middle), and `"object_f1"`, the F1 of the multisets of
        (colour, shape) pairs (a colour word directly followed by a shape word); 1.0 when both are empty.

    Examples:

    ```python
    >>> caption_f1("a small red circle on the left .", "a small red square on the left .")
    {'attr_f1': 0.75, 'object_f1': 0.0}
    ```
    """
    from vcontrast.toy.grammar import words
    from vcontrast.toy.scenes import COLORS, SHAPES, SIZES

    attributes = {*COLORS, *SHAPES, *SIZES, *_POSITION_WORDS}

    def objects(ws: list[str]) -> Counter:
        return Counter((a, b) for a, b in pairwise(ws) if a in COLORS and b in SHAPES)

    p, r = words(prediction), words(reference)
    return {
        "attr_f1": _f1(Counter(w for w in p if w in attributes), Counter(w for w in r if w in attributes)),
        "object_f1": _f1(objects(p), objects(r)),
    }


def _f1(predicted: Counter, true: Counter) -> float:
    total = sum(predicted.values()) + sum(true.values())
    return 1.0 if total == 0 else 2 * sum((predicted & true).values()) / total


def caption_metrics(
    model, processor, examples: list[dict], *, batch_size: int = 16, max_new_tokens: int = 48
) -> dict[str, float]:
    """Teacher-forced word accuracy and greedy-caption F1s of a model on caption examples.

    Args:
        model (`LlavaForConditionalGeneration`): the model.
        processor (`LlavaProcessor`): its processor.
        examples (`list[dict]`): caption examples (`"image"`, `"prompt"`, `"answer"`), e.g. clean test captions.
        batch_size (`int`, *optional*, defaults to 16): examples per forward / `generate` call.
        max_new_tokens (`int`, *optional*, defaults to 48): caption length limit.

    Returns:
        `dict[str, float]`: `caption_word_accuracy`'s keys plus the means of `caption_f1` (`"attr_f1"`,
        `"object_f1"`) and `"caption_exact"` (the whole caption right, word for word).
    """
    from vcontrast.toy.train import caption_word_accuracy, exact_match, generate_answers

    out = caption_word_accuracy(model, processor, examples, batch_size=batch_size)
    texts = generate_answers(model, processor, examples, batch_size=batch_size, max_new_tokens=max_new_tokens)
    scores = [caption_f1(t, ex["answer"]) for t, ex in zip(texts, examples, strict=True)]
    for key in ("attr_f1", "object_f1"):
        out[key] = sum(s[key] for s in scores) / len(scores)
    out["caption_exact"] = sum(exact_match(t, ex["answer"]) for t, ex in zip(texts, examples, strict=True)) / len(
        examples
    )
    return out


def clean_test_captions(n: int) -> list[dict]:
    """`n` clean captions of the balanced "test" split (item seeds 0..n-1), as examples."""
    from vcontrast.toy.tasks import iter_split
    from vcontrast.toy.train import item_example

    return [item_example(image, item) for image, item in iter_split("caption", n, seed=0, split="test")]


def clean_pool(size: int, seed: int) -> list[dict]:
    """The fixed pool of `size` "train"-split caption examples of one seed (before any noise)."""
    from vcontrast.toy.train import task_examples

    rng = random.Random(f"cal-noise-pool-{seed}")
    seeds = [rng.randrange(2**31) for _ in range(size)]
    return task_examples(seeds, stage="pt", split="train", rng=rng)


def noisy_pool(pool: list[dict], rate: float, seed: int) -> tuple[list[dict], list[int]]:
    """`pool` with a fraction `rate` of its captions swapped (`swap_captions`); returns it and the swapped indices."""
    from vcontrast.toy.pairs import swap_captions

    pairs, swapped = swap_captions([(ex, ex["answer"]) for ex in pool], rate, seed)
    return [{**ex, "answer": text} for ex, text in pairs], swapped


def _cal_loss_fn(model, batch, config):
    from vcontrast.cal import cal_loss

    return cal_loss(model, batch, config).loss


def loss_fn(method: str):
    """The training loss of `method`: "mle" (`vcontrast.toy.train.mle_loss`) or "cal" (`cal_loss` with `CALConfig()`,
    the paper's alpha=1, beta=5, window=3)."""
    from vcontrast.cal import CALConfig
    from vcontrast.toy.train import mle_loss

    if method not in METHODS:
        raise ValueError(f"`method` (={method!r}) must be one of {METHODS}")
    return mle_loss if method == "mle" else partial(_cal_loss_fn, config=CALConfig(alpha=1.0, beta=5.0, window=3))


def init_run(work_dir: Path, source: str | Path | None = None) -> Path:
    """Stage 0: a toy model with `source`'s vision tower (default: the shipped model's) and a freshly initialised
    projector and LM (seed 0), saved with the source's processor into `work_dir/init` (reused if there)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from vcontrast.toy.model import load

    out = Path(work_dir) / "init"
    if (out / "model.safetensors").is_file():
        return out
    pretrained, processor = load(source)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(pretrained.config)
    tower = {k: v for k, v in pretrained.state_dict().items() if "vision_tower" in k}
    missing, unexpected = model.load_state_dict(tower, strict=False)
    if unexpected or any("vision_tower" in k for k in missing):
        raise ValueError(f"could not copy the vision tower of {source}: {unexpected or missing}")
    model.generation_config = pretrained.generation_config
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def align_run(budget: ExperimentBudget, work_dir: Path) -> Path:
    """Stage 1: the shared MLE alignment stage on clean, freshly drawn "train" captions (seed 0), from `init_run`."""
    from vcontrast.toy.train import train

    return train(
        work_dir / "align",
        stage="pt",
        init=work_dir / "init",
        trainable="projector+lm",
        steps=budget.align_steps,
        batch_size=budget.batch_size,
        lr=budget.align_lr,
        seed=0,
        warmup=max(1, budget.align_steps // 10),
        log_every=max(1, budget.align_steps // 10),
        save_every=10**9,
        num_threads=budget.num_threads,
    )


def run_name(protocol: str, method: str, rate: float, seed: int) -> str:
    """Folder name of one training run, e.g. "two_stage-cal-noise30-seed1"."""
    return f"{protocol}-{method}-noise{round(100 * rate):02d}-seed{seed}"


def finetune_run(
    budget: ExperimentBudget,
    work_dir: Path,
    method: str,
    rate: float,
    seed: int,
    pool: list[dict],
    protocol: str = "two_stage",
) -> Path:
    """Stage 2 (or the from-scratch ablation): train on the noisy pool with `method`'s loss; returns the model folder
    (a finished run is reused)."""
    from vcontrast.toy.train import train

    data, _ = noisy_pool(pool, rate, seed)
    two_stage = protocol == "two_stage"
    steps = budget.finetune_steps if two_stage else budget.align_steps + budget.finetune_steps
    return train(
        work_dir / run_name(protocol, method, rate, seed),
        steps=steps,
        batch_size=budget.batch_size,
        lr=budget.finetune_lr if two_stage else budget.align_lr,
        seed=seed,
        init=work_dir / ("align" if two_stage else "init"),
        trainable="projector+lm",
        loss_fn=loss_fn(method),
        data=data,
        warmup=max(1, steps // 10),
        log_every=max(1, steps // 5),
        save_every=10**9,
        num_threads=budget.num_threads,
    )


def cal_work_dir(budget: ExperimentBudget, work_dir: Path, source: str | Path | None = None) -> Path:
    """The training folder of "cal_noise" (shared with "cal_crg"), guarded against mixing budgets or vision towers;
    creates its `init` model (`init_run`)."""
    folder = Path(work_dir) / "cal_noise"
    fields = ("seeds", "align_steps", "finetune_steps", "batch_size", "align_lr", "finetune_lr", "pool_size")
    check_work_dir(folder, {k: getattr(budget, k) for k in fields} | {"vision_tower_sha256": vision_digest(source)})
    init_run(folder, source)
    return folder


def vision_digest(source: str | Path | None = None) -> str:
    """SHA-256 (first 16 hex digits) of a toy model's vision tower weights (default: the shipped model's): the same
    for every model that shares the tower, e.g. all stages of the toy recipe after its vision stage."""
    import hashlib

    from safetensors import safe_open

    from vcontrast.toy.model import WEIGHTS_DIR

    path = Path(source if source is not None else WEIGHTS_DIR) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no toy model weights at {path}")
    digest = hashlib.sha256()
    with safe_open(path, framework="pt") as f:
        for key in sorted(k for k in f.keys() if "vision_tower" in k):  # noqa: SIM118 (safe_open is no dict)
            digest.update(key.encode())
            digest.update(f.get_tensor(key).float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _weight_diagnostic(model_dir: Path, pool: list[dict], rate: float, seed: int, n: int) -> dict[str, float]:
    # CAL's mean token weight on clean vs swapped captions under the aligned model (the weights CAL starts with):
    # the mechanism the method relies on, measured rather than assumed.
    import torch

    from vcontrast.cal import CALConfig, cal_weights
    from vcontrast.toy.model import load
    from vcontrast.toy.train import collate

    model, processor = load(model_dir)
    data, swapped = noisy_pool(pool, rate, seed)
    swapped = set(swapped)
    sums = {"clean": [0.0, 0], "swapped": [0.0, 0]}
    with torch.no_grad():
        for start in range(0, min(n, len(data)), 32):
            chunk = data[start : start + 32]
            weights = cal_weights(model, collate(processor, chunk), CALConfig())  # (B, T)
            for i, row in enumerate(weights):
                key = "swapped" if start + i in swapped else "clean"
                sums[key][0] += float(row[row > 0].sum())
                sums[key][1] += int((row > 0).sum())
    return {f"mean_weight_{k}": s / c if c else float("nan") for k, (s, c) in sums.items()}


def model_summary(model_dir: Path) -> dict[str, Any]:
    """The size of a saved toy model: parameter count and the config fields that set it (recorded with results, since
    `toy_config`'s defaults may change)."""
    import json

    from vcontrast.toy.model import load

    model, _ = load(model_dir)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": vision.get("image_size"),
        "patch_size": vision.get("patch_size"),
        "vision": {k: vision.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")},
        "text": {k: text.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")},
    }


def train_seconds(model_dir: Path) -> float:
    """The training-loop time of a finished `train` run, from its `log.jsonl` (so a rerun that reuses the run still
    reports the time it took); NaN without a log."""
    import json

    log = Path(model_dir) / "log.jsonl"
    if not log.is_file():
        return float("nan")
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return float(json.loads(lines[-1]).get("elapsed_s", float("nan"))) if lines else float("nan")


def _evaluate(model_dir: Path, tests: list[dict], budget: ExperimentBudget) -> tuple[dict, float]:
    from vcontrast.toy.model import load

    start = time.perf_counter()
    model, processor = load(model_dir)
    metrics = caption_metrics(
        model, processor, tests, batch_size=budget.eval_batch_size, max_new_tokens=budget.max_new_tokens
    )
    return metrics, time.perf_counter() - start


def run_cal_noise(budget: ExperimentBudget, work_dir: Path, model: str | Path | None = None) -> tuple[str, dict, Any]:
    """Run "cal_noise" (see the module docstring); returns `(markdown, raw numbers, plot function)`.

    `model` is the toy model whose vision tower the new models start from (default: the shipped one).
    """
    folder = cal_work_dir(budget, work_dir, model)
    tests = clean_test_captions(budget.n_test)
    align = align_run(budget, folder)
    align_metrics, _ = _evaluate(align, tests, budget)
    protocols = ["two_stage"] + (["from_scratch"] if budget.from_scratch else [])
    runs: list[dict] = []
    diagnostics = {}
    for seed in budget.seeds:
        pool = clean_pool(budget.pool_size, seed)
        for rate in budget.noise_rates:
            if rate > 0:
                n = min(256, budget.pool_size)
                diagnostics[f"noise{round(100 * rate)}-seed{seed}"] = _weight_diagnostic(align, pool, rate, seed, n)
            for protocol in protocols:
                for method in METHODS:
                    model_dir = finetune_run(budget, folder, method, rate, seed, pool, protocol)
                    train_s = train_seconds(model_dir)
                    metrics, eval_s = _evaluate(model_dir, tests, budget)
                    record = {"protocol": protocol, "method": method, "noise": rate, "seed": seed}
                    runs.append(record | {"train_s": train_s, "eval_s": round(eval_s, 1), **metrics})
                    logger.info("%s", runs[-1])
    summary = _summaries(runs, budget, protocols)
    data = {
        "protocol": "\n\n".join(__doc__.split("\n\n")[1:4]),
        "align": {"model_dir": str(align), "train_s": train_seconds(align), "metrics": align_metrics},
        "model": model_summary(align) | {"vision_source": str(model) if model is not None else "shipped"},
        "weight_diagnostic": diagnostics,
        "runs": runs,
        "summary": summary,
    }
    table = _table(summary, align_metrics, budget, protocols, diagnostics)
    return table, data, partial(_plot, summary=summary, budget=budget, align_metrics=align_metrics)


def _summaries(runs: list[dict], budget: ExperimentBudget, protocols: list[str]) -> dict:
    out: dict[str, dict] = {}
    for protocol in protocols:
        for rate in budget.noise_rates:
            key = f"{protocol}/noise{round(100 * rate)}"
            by = {
                m: {r["seed"]: r for r in runs if (r["protocol"], r["noise"], r["method"]) == (protocol, rate, m)}
                for m in METHODS
            }
            entry: dict[str, Any] = {"protocol": protocol, "noise": rate}
            for metric in METRICS:
                for method in METHODS:
                    entry[f"{method}/{metric}"] = summarize([by[method][s][metric] for s in budget.seeds])
                deltas = [by["cal"][s][metric] - by["mle"][s][metric] for s in budget.seeds]
                entry[f"delta/{metric}"] = summarize(deltas)
            out[key] = entry
    return out


def _table(summary: dict, align_metrics: dict, budget: ExperimentBudget, protocols: list[str], diag: dict) -> str:
    seeds = len(budget.seeds)
    lines = []
    for protocol in protocols:
        title = "Two-stage (MLE alignment, then noisy fine-tuning)" if protocol == "two_stage" else "From scratch"
        lines.append(f"### cal_noise: CAL vs MLE under swapped captions — {title}\n")
        for metric, label in METRICS.items():
            rows = []
            for rate in budget.noise_rates:
                e = summary[f"{protocol}/noise{round(100 * rate)}"]
                d = e[f"delta/{metric}"]
                rows.append(
                    [
                        f"{round(100 * rate)}%",
                        pct_spread(e[f"mle/{metric}"]),
                        pct_spread(e[f"cal/{metric}"]),
                        pct_delta(d["mean"], (d["min"], d["max"])),
                    ]
                )
            head = ["noise", f"MLE {label}", f"CAL {label}", f"CAL − MLE, mean [min, max] over {seeds} seeds"]
            lines += [markdown_table(head, rows), ""]
    lines.append(
        f"Alignment stage alone (before fine-tuning): word acc {pct(align_metrics['word_acc'])}, attribute F1 "
        f"{pct(align_metrics['attr_f1'])}, object F1 {pct(align_metrics['object_f1'])}. Values: % on "
        f"{budget.n_test} clean test captions, mean ± std over {seeds} seeds."
    )
    if diag:
        clean = [d["mean_weight_clean"] for d in diag.values()]
        swapped = [d["mean_weight_swapped"] for d in diag.values()]
        lines.append(
            f"\nCAL token weight under the aligned model (clamp [1, 5]): clean captions "
            f"{sum(clean) / len(clean):.2f}, swapped captions {sum(swapped) / len(swapped):.2f} (mean over the "
            "noisy pools)."
        )
    return "\n".join(lines)


def _plot(path: Path, summary: dict, budget: ExperimentBudget, align_metrics: dict) -> None:
    import matplotlib.pyplot as plt

    protocols = sorted({e["protocol"] for e in summary.values()}, key=["two_stage", "from_scratch"].index)
    fig, axes = plt.subplots(len(protocols), len(METRICS), figsize=(4.2 * len(METRICS), 3.4 * len(protocols)))
    axes = [axes] if len(protocols) == 1 else axes
    x = [100 * r for r in budget.noise_rates]
    for row, protocol in zip(axes, protocols, strict=True):
        for ax, (metric, label) in zip(row, METRICS.items(), strict=True):
            for method, color, shift in (("mle", "tab:gray", -0.4), ("cal", "tab:red", 0.4)):
                stats = [summary[f"{protocol}/noise{round(v)}"][f"{method}/{metric}"] for v in x]
                ax.errorbar(
                    [v + shift for v in x],
                    [100 * s["mean"] for s in stats],
                    yerr=[100 * s["std"] for s in stats],
                    label=method.upper(),
                    color=color,
                    marker="o",
                    capsize=3,
                )
            if protocol == "two_stage":
                ax.axhline(100 * align_metrics[metric], color="tab:blue", ls=":", lw=1, label="alignment stage")
            ax.set_xlabel("swapped captions (%)")
            ax.set_ylabel(f"{label} (%)")
            ax.set_xticks(x)
            ax.set_title(f"{protocol.replace('_', '-')}: {label}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"CAL vs MLE under label noise (toy world, mean ± std over {len(budget.seeds)} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
