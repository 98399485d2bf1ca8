"""The test bed's gates: can a toy model show an effect of CRG and CAL at all, before it is used to measure one?

A model that ignores the image leaves CRG nothing to amplify, and a model whose no-image pass knows no language makes
CAL weigh glue words as visual (DESIGN.md §3). `measure` computes, on the balanced **val** split (never test):

- `mirror_flip`: the share of left/right spatial items whose preference between "left of" and "right of" flips
  when the image is mirrored (the relation depends on the image), and `mirror_shift`: half the change of that
  preference (log-prob difference, nats) between the image and its mirror, signed so that positive is towards the
  gold relation and averaged over items; it shows a relation partly learnt before a language prior lets it flip;
- `spatial_acc` (4-way choice), split into `spatial_acc/prior_consistent` (gold "left of", the train split's favourite)
  and `spatial_acc/prior_inconsistent`, and their difference `spatial_prior_gap` (room for CRG);
- `match_auroc` (image-text match, P(yes) renormalised over yes/no), `where_acc` (greedy "where is ... ?" exact match),
  `swap_acc` (2-way choice);
- CAL's logit gains (logit with the image - logit without, `vcontrast.cal.cal_deltas`) on val captions: median over
  glue words (`delta_glue`) and over visual words (`delta_visual`: colour, shape, size, position), and the share of
  items whose one contradicted colour word (the caption with one object's colour replaced) has a negative gain
  (`contradicted_negative`).

`check` compares them with `GATES` (issue #14) and `gates_table` prints the result; `learning_curve` measures every
snapshot of a training run. Scores use the plain model (`CRG` with alpha 0), as the eval runner's "base" does.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

__all__ = [
    "CLAIM_GATES",
    "GATES",
    "Gate",
    "GateResult",
    "check",
    "claims_gates_table",
    "gates_table",
    "learning_curve",
    "measure",
]

GLUE_WORDS = frozenset({"a", "an", "and", ",", ".", "at", "the", "on", "in", "word", "number", "is", "of"})


@dataclass(frozen=True)
class Gate:
    """One gate: `low <= metrics[key] <= high` (either bound may be None)."""

    key: str
    label: str
    low: float | None = None
    high: float | None = None

    def passes(self, value: float) -> bool:
        """Whether `value` lies within the bounds (NaN never passes)."""
        if math.isnan(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    @property
    def threshold(self) -> str:
        """The bounds as text, e.g. ">= 0.8" or "0.6-0.9"."""
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g}"
        return f">= {self.low:g}" if self.low is not None else f"<= {self.high:g}"


GATES: tuple[Gate, ...] = (
    Gate("mirror_flip", "mirror test: left/right preference flips", low=0.8),
    Gate("spatial_acc", "spatial 4-way accuracy", low=0.6, high=0.9),
    Gate("spatial_prior_gap", "spatial: prior-consistent minus prior-inconsistent accuracy", low=0.10),
    Gate("match_auroc", "image-text match AUROC", low=0.75),
    Gate("where_acc", '"where is" exact match', low=0.6),
    Gate("swap_acc", "swap 2-way accuracy", low=0.7, high=0.95),
    Gate("delta_glue", "CAL gain, glue words (median)", high=1.0),
    Gate("delta_visual", "CAL gain, visual words (median)", low=3.0),
    Gate("contradicted_negative", "contradicted colour word has a negative gain", low=0.8),
)


_CAL_GATES = ("delta_glue", "delta_visual", "contradicted_negative")
# PLAN.md: "An experiment runs even if a gate fails; its report then names the failed gate next to every claim it
# affects." Per experiment, its claims and the gates each rests on.
CLAIM_GATES: dict[str, dict[str, tuple[str, ...]]] = {
    "crg": {
        "H1.1 spatial accuracy (and its prior-inconsistent gain)": ("mirror_flip", "spatial_acc", "spatial_prior_gap"),
        "H1.2 swap accuracy": ("swap_acc",),
        "H1.3 match AUROC": ("match_auroc",),
        "H1.4 region-VQA exact match": (),
        "H1.5 refexp re-ranking (relational expressions also rest on the relation)": ("where_acc", "mirror_flip"),
    },
    "cal_noise": {"H2.1-H2.3 and every cell (CAL's weights are the logit gains)": _CAL_GATES},
    "cal_scratch": {"H3 and every cell (CAL's weights are the logit gains)": _CAL_GATES},
}


@dataclass
class GateResult:
    """A gate with its measured value."""

    gate: Gate
    value: float
    passed: bool


def _visual_words() -> frozenset[str]:
    from vcontrast.toy.grammar import POSITIONS, words
    from vcontrast.toy.scenes import COLORS, SHAPES, SIZES

    positions = {w for row in POSITIONS for phrase in row for w in words(phrase)} - GLUE_WORDS
    return frozenset({*COLORS, *SHAPES, *SIZES, *positions})


def _items(task: str, n: int, seed: int, split: str) -> list[tuple[Image.Image, Any]]:
    from vcontrast.toy.tasks import iter_split

    return list(iter_split(task, n, seed, split))


def _choice_scores(scorer, images, prompts, candidates, batch_size: int) -> list[list[float]]:
    out = []
    for i in range(0, len(images), batch_size):
        chunk = slice(i, i + batch_size)
        out += scorer.score_batch(images[chunk], prompts[chunk], candidates[chunk])
    return out


def _argmax(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


def _spatial(scorer, n: int, seed: int, split: str, batch_size: int) -> dict[str, float]:
    items = _items("spatial", n, seed, split)
    scores = _choice_scores(
        scorer, [im for im, _ in items], [it.prompt for _, it in items], [it.candidates for _, it in items], batch_size
    )
    right = [_argmax(s) == it.answer for s, (_, it) in zip(scores, items, strict=True)]
    consistent = [r for r, (_, it) in zip(right, items, strict=True) if it.answer == it.meta["prior"]]
    inconsistent = [r for r, (_, it) in zip(right, items, strict=True) if it.answer != it.meta["prior"]]
    out = {
        "spatial_acc": _mean(right),
        "spatial_acc/prior_consistent": _mean(consistent),
        "spatial_acc/prior_inconsistent": _mean(inconsistent),
    }
    out["spatial_prior_gap"] = out["spatial_acc/prior_consistent"] - out["spatial_acc/prior_inconsistent"]
    return out


def _mirror(scorer, n: int, seed: int, split: str, batch_size: int) -> dict[str, float]:
    # Left/right items only; candidates 0 and 1 are "... left of ..." and "... right of ..." (RELATIONS order).
    from vcontrast.toy.grammar import RELATIONS

    lr = (RELATIONS.index("left of"), RELATIONS.index("right of"))
    items = [(im, it) for im, it in _items("spatial", 3 * n, seed + 7, split) if it.answer in lr][:n]
    images = [im for im, _ in items] + [ImageOps.mirror(im) for im, _ in items]
    prompts = [it.prompt for _, it in items] * 2
    pairs = [[it.candidates[lr[0]], it.candidates[lr[1]]] for _, it in items] * 2
    scores = _choice_scores(scorer, images, prompts, pairs, batch_size)
    prefs = [s[0] - s[1] for s in scores]  # > 0: prefers "left of"
    k = len(items)
    flips = [(a > 0) != (b > 0) and a != 0 and b != 0 for a, b in zip(prefs[:k], prefs[k:], strict=True)]
    both = [
        (a > 0) == (it.answer == lr[0]) and (b > 0) == (it.answer == lr[1])
        for a, b, (_, it) in zip(prefs[:k], prefs[k:], items, strict=True)
    ]
    # The mirror swaps the gold relation, so (a - b) / 2 is the image's pull towards "left of", free of the prior.
    shift = [
        (a - b) / 2 * (1 if it.answer == lr[0] else -1)
        for a, b, (_, it) in zip(prefs[:k], prefs[k:], items, strict=True)
    ]
    return {
        "mirror_flip": _mean(flips),
        "mirror_shift": _mean(shift),
        "mirror_both_right": _mean(both),
        "mirror_items": float(k),
    }


def _match(scorer, n: int, seed: int, split: str, batch_size: int) -> dict[str, float]:
    from vcontrast.bench.metrics import auroc
    from vcontrast.toy.grammar import PROMPTS

    items = _items("match", n, seed, split)
    probs = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        probs += scorer.match_batch([im for im, _ in chunk], [it.prompt for _, it in chunk], template=PROMPTS["match"])
    return {"match_auroc": auroc([it.label for _, it in items], probs)}


def _swap(scorer, n: int, seed: int, split: str, batch_size: int) -> dict[str, float]:
    items = _items("swap", n, seed, split)
    scores = _choice_scores(
        scorer, [im for im, _ in items], [it.prompt for _, it in items], [it.candidates for _, it in items], batch_size
    )
    return {"swap_acc": _mean([_argmax(s) == it.answer for s, (_, it) in zip(scores, items, strict=True)])}


def _where(model, processor, n: int, seed: int, split: str, batch_size: int) -> dict[str, float]:
    from vcontrast.toy.train import exact_match, generate_answers, item_example

    examples = [item_example(im, it) for im, it in _items("where", n, seed, split)]
    answers = generate_answers(model, processor, examples, batch_size=batch_size)
    right = [exact_match(a, ex["answer"]) for a, ex in zip(answers, examples, strict=True)]
    out = {"where_acc": _mean(right)}
    for kind in ("intrinsic", "relational"):
        out[f"where_acc/{kind}"] = _mean(
            [r for r, ex in zip(right, examples, strict=True) if ex["item"].meta["kind"] == kind]
        )
    return out


def contradicted_caption(scene, rng: random.Random) -> tuple[str, int, str]:
    """The scene's caption with one object's colour word replaced by another colour.

    Returns:
        `tuple[str, int, str]`: the caption, the index (in `grammar.words` of it) of the replaced word, and the
        word written there. Captions always name a size before the colour ("a small red circle"), so the article
        never changes and the two captions differ in that one word.
    """
    from dataclasses import replace

    from vcontrast.toy.grammar import caption, words
    from vcontrast.toy.scenes import COLORS

    i = rng.randrange(len(scene.objects))
    obj = scene.objects[i]
    color = rng.choice([c for c in COLORS if c != obj.color])
    objects = list(scene.objects)
    objects[i] = replace(obj, color=color)
    text = caption(replace(scene, objects=objects))
    diff = [k for k, (a, b) in enumerate(zip(words(caption(scene)), words(text), strict=True)) if a != b]
    if len(diff) != 1:
        raise AssertionError(f"captions differ in {len(diff)} words, expected one: {text!r}")
    return text, diff[0], color


def _deltas(model, processor, n: int, seed: int, split: str, batch_size: int) -> dict[str, float]:
    from vcontrast.cal import cal_deltas
    from vcontrast.toy.scenes import Scene
    from vcontrast.toy.train import collate, item_example

    tok = processor.tokenizer
    visual = _visual_words()
    items = _items("caption", n, seed, split)
    rng = random.Random(f"contradicted-{seed}")
    clean, corrupted, where = [], [], []
    for image, item in items:
        clean.append(item_example(image, item))
        scene = Scene.from_dict(item.meta["scene"])
        if scene.objects:
            text, index, word = contradicted_caption(scene, rng)
            corrupted.append(clean[-1] | {"answer": text})
            where.append((index, word))
    glue, vis, negative = [], [], []
    for start in range(0, len(clean), batch_size):
        batch = collate(processor, clean[start : start + batch_size])
        delta, mask = cal_deltas(model, batch)
        for row in range(delta.shape[0]):
            words = tok.convert_ids_to_tokens(batch["labels"][row][mask[row]])
            for word, value in zip(words, delta[row][mask[row]].tolist(), strict=True):
                if word in GLUE_WORDS:
                    glue.append(float(value))
                elif word in visual:
                    vis.append(float(value))
    for start in range(0, len(corrupted), batch_size):
        batch = collate(processor, corrupted[start : start + batch_size])
        delta, mask = cal_deltas(model, batch)
        for row in range(delta.shape[0]):
            index, word = where[start + row]
            tokens = tok.convert_ids_to_tokens(batch["labels"][row][mask[row]])
            if tokens[index] != word:
                raise AssertionError(f"label token {index} is {tokens[index]!r}, expected {word!r}")
            negative.append(float(delta[row][mask[row]][index]) < 0)
    return {
        "delta_glue": statistics.median(glue),
        "delta_visual": statistics.median(vis),
        "delta_visual_p90": _quantile(vis, 0.9),
        "contradicted_negative": _mean(negative),
    }


def _quantile(values: Sequence[float], q: float) -> float:
    return float(torch.tensor(values).quantile(q)) if values else float("nan")


def _mean(values: Sequence[bool | float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@torch.no_grad()
def measure(
    model, processor, *, n: int = 200, seed: int = 0, split: str = "val", batch_size: int = 16
) -> dict[str, float]:
    """Every gate metric of a toy model (see the module docstring), `n` items per task.

    Args:
        model (`LlavaForConditionalGeneration`): a toy model in eval mode.
        processor (`LlavaProcessor`): its processor.
        n (`int`, *optional*, defaults to 200): items per task (the mirror test uses `n` left/right items).
        seed (`int`, *optional*, defaults to 0): item seeds `seed * 1_000_000 + i`.
        split (`str`, *optional*, defaults to `"val"`): "val" for gates; "test" is for reported results only.
        batch_size (`int`, *optional*, defaults to 16): items per forward.

    Returns:
        `dict[str, float]`: the metrics named in the module docstring, plus breakdowns.
    """
    from vcontrast.crg import CRG

    if n <= 0:
        raise ValueError(f"`n` (={n}) must be positive")
    scorer = CRG(model, processor, alpha=0.0, mode="whole")  # the plain model, scored as the eval runner's "base"
    metrics: dict[str, float] = {}
    for part in (_mirror, _spatial, _match, _swap):
        metrics |= part(scorer, n, seed, split, batch_size)
    metrics |= _where(model, processor, n, seed, split, batch_size)
    metrics |= _deltas(model, processor, n, seed, split, batch_size)
    return metrics


def check(metrics: dict[str, float], gates: Sequence[Gate] = GATES) -> list[GateResult]:
    """Each gate with its value from `metrics` and whether it passes.

    Raises:
        `ValueError`: `metrics` lacks a gate's key.
    """
    missing = [g.key for g in gates if g.key not in metrics]
    if missing:
        raise ValueError(f"`metrics` lacks {missing}; compute them with `measure`")
    return [GateResult(g, float(metrics[g.key]), g.passes(float(metrics[g.key]))) for g in gates]


def gates_table(results: Sequence[GateResult]) -> str:
    """The gates as a markdown table: gate, value, threshold, pass/FAIL."""
    lines = ["| gate | value | threshold | result |", "|---|---:|---|---|"]
    for r in results:
        lines.append(f"| {r.gate.label} | {r.value:.3f} | {r.gate.threshold} | {'pass' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def claims_gates_table(experiment: str, metrics: dict[str, float] | None, source: str = "") -> str:
    """Markdown naming, for each claim of `experiment` (`CLAIM_GATES`), the gates it rests on that failed (with their
    values), from `metrics` (what `measure` returns, e.g. read from `vcontrast toy gates --json`). Empty for an
    experiment without claims; a line saying the gates were not given when `metrics` is None."""
    claims = CLAIM_GATES.get(experiment)
    if not claims:
        return ""
    head = "#### Gates behind each claim (PLAN.md: a failed gate is named next to every claim it affects)\n"
    if metrics is None:
        return head + "\nGates not given: pass `--gates` (a `vcontrast toy gates --json` file) to name the failed."
    by_key = {result.gate.key: result for result in check(metrics)}
    rows = []
    for claim, keys in claims.items():
        failed = [by_key[key] for key in keys if not by_key[key].passed]
        named = "; ".join(f"{r.gate.label} {_shown(r.gate, r.value)} (needs {_needs(r.gate)})" for r in failed)
        rows.append([claim, named or ("none failed" if keys else "no gate covers it")])
    table = "\n".join(["| claim | failed gates |", "|:--|:--|", *(f"| {a} | {b} |" for a, b in rows)])
    return head + (f"\nGates measured on {source}.\n" if source else "\n") + "\n" + table


_AS_NUMBER = ("match_auroc", "delta_glue", "delta_visual")  # the others are shares (percent) or points


def _shown(gate: Gate, value: float) -> str:
    # Shares and accuracies in percent (the prior gap in points), AUROC and gains as numbers.
    if gate.key in _AS_NUMBER:
        return f"{value:.2f}"
    return f"{100 * value:.1f}" + (" pts" if gate.key == "spatial_prior_gap" else "%")


def _needs(gate: Gate) -> str:
    # The gate's bounds in the units `_shown` uses.
    if gate.key in _AS_NUMBER:
        return gate.threshold
    unit = " pts" if gate.key == "spatial_prior_gap" else "%"
    low, high = (None if b is None else f"{100 * b:g}" for b in (gate.low, gate.high))
    if low is not None and high is not None:
        return f"{low}-{high}{unit}"
    return f">= {low}{unit}" if low is not None else f"<= {high}{unit}"


def learning_curve(run_dir: str | Path, *, n: int = 100, **kwargs: Any) -> list[dict[str, float]]:
    """Gate metrics of a `vcontrast toy train` run's finished grounding phases (`run_dir/ground-K-TASK`), then of
    every IT snapshot (`run_dir/snapshots/step-N`) and the final model: the learning curve a failed gate is reported
    with.

    Returns:
        `list[dict]`: one metrics dict per model, with its `"phase"` ("ground-K-TASK" or "it") and its `"step"` in
        that phase.
    """
    import json

    from vcontrast.toy.model import load

    def finished_step(folder: Path) -> int | None:
        state = folder / "train_state.json"
        return json.loads(state.read_text())["step"] if state.is_file() else None

    run_dir = Path(run_dir)
    grounding = sorted(run_dir.glob("ground-*-*"), key=lambda p: int(p.name.split("-")[1]))
    points = [(p.name, step, p) for p in grounding if (step := finished_step(p)) is not None]
    snapshots = sorted((run_dir / "snapshots").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    points += [("it", int(p.name.split("-")[1]), p) for p in snapshots]
    if (final := finished_step(run_dir)) is not None:
        points.append(("it", final, run_dir))
    if not points:
        raise FileNotFoundError(f"{run_dir} holds no snapshots and no finished model")
    out = []
    for phase, step, folder in points:
        model, processor = load(folder)
        out.append({"phase": phase, "step": float(step)} | measure(model, processor, n=n, **kwargs))
    return out
