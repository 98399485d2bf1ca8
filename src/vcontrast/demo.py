"""The main job (`make demo`): the shipped toy model on a few toy scenes, with and without CRG, a CAL heatmap and a
small results table, all written under one folder.

Everything here calls the public pieces (`CRG`, `cal_deltas`, the toy tasks, the eval runner); nothing is
demo-specific but the layout of the output.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from vcontrast.atomic import save_image, write_text

logger = logging.getLogger(__name__)

DEMO_TASKS = ("vqa", "region_vqa")
# Questions about one object's attribute: the ones where blacking out that object's box is CRG's premise.
DEMO_KINDS = ("color", "shape", "size")


def crg_examples(model, processor, out: Path, n_scenes: int, echo: Callable[[str], None]) -> list[dict]:
    """Answer toy questions with and without CRG (true boxes), save a side-by-side picture per scene."""
    from vcontrast.crg import CRG
    from vcontrast.regions import blackout
    from vcontrast.toy.tasks import build_task
    from vcontrast.viz import side_by_side

    plain, guided = CRG(model, processor, alpha=0.0), CRG(model, processor, alpha=1.0)
    rows, seed = [], 1000
    for i in range(n_scenes):
        image, item = build_task(DEMO_TASKS[i % len(DEMO_TASKS)], seed=seed, split="test")
        while item.meta.get("kind") not in DEMO_KINDS or not item.regions:
            seed += 1
            image, item = build_task(DEMO_TASKS[i % len(DEMO_TASKS)], seed=seed, split="test")
        seed += 1
        answer_plain = plain.generate(image, item.prompt, item.regions, max_new_tokens=8)
        answer_crg = guided.generate(image, item.prompt, item.regions, max_new_tokens=8)
        picture = side_by_side(
            image,
            blackout(image, item.regions),
            item.regions,
            {"truth": str(item.answer), "plain": answer_plain, "CRG (alpha=1)": answer_crg},
            title=item.prompt,
        )
        path = save_image(picture, out / f"crg_{i}.png")
        rows.append({"question": item.prompt, "truth": item.answer, "plain": answer_plain, "crg": answer_crg})
        echo(f"  {item.prompt:<45} truth={item.answer!s:<10} plain={answer_plain:<10} crg={answer_crg:<10} {path}")
    return rows


def swapped_caption(scene) -> tuple[str, list[int]]:
    """The scene's caption with the colours of its first two differently coloured objects swapped (SugarCrepe's
    swap): the same words, two of them now wrong. Returns the caption and the word indices of the wrong colours."""
    from dataclasses import replace

    from vcontrast.toy.grammar import caption, words

    objects = list(scene.objects)
    pairs = [
        (i, j) for i in range(len(objects)) for j in range(i + 1, len(objects)) if objects[i].color != objects[j].color
    ]
    if not pairs:
        raise ValueError("the scene needs two objects of different colours to swap")
    i, j = pairs[0]
    objects[i], objects[j] = replace(objects[i], color=objects[j].color), replace(objects[j], color=objects[i].color)
    text = caption(replace(scene, objects=objects))
    wrong = [k for k, (a, b) in enumerate(zip(words(caption(scene)), words(text), strict=True)) if a != b]
    return text, wrong


def word_tokens(tokens: list[str], text: str, spans: list[tuple[int, int]]) -> list[list[int]]:
    """The positions in `tokens` (a tokenizer's pieces of `text`, decoded one by one) of each character span of
    `text`: the pieces overlapping it. Pieces are matched to `text` with whitespace ignored (a decoded piece may drop
    its leading space), so this works for the toy model's word tokens and for a real model's subwords alike."""
    chars = [k for k, c in enumerate(text) if not c.isspace()]  # text position of each non-space character
    pieces = ["".join(t.split()) for t in tokens]
    start = "".join(pieces).find("".join(text.split()))
    if start < 0:
        raise ValueError(f"the tokens {tokens!r} do not spell the text {text!r}")
    out, at = [[] for _ in spans], -start  # `at`: where the next piece starts among `text`'s non-space characters
    for k, piece in enumerate(pieces):
        covered = {chars[i] for i in range(max(at, 0), min(at + len(piece), len(chars)))}
        for span, positions in zip(spans, out, strict=True):
            if any(span[0] <= i < span[1] for i in covered):
                positions.append(k)
        at += len(piece)
    return out


def cal_heatmap(model, processor, out: Path, echo: Callable[[str], None], color: bool = False) -> dict:
    """CAL's per-token image gain and weight on a clean caption of one scene and on the same caption with two
    colours swapped (`swapped_caption`), drawn as in the CAL paper's Figure 2a (`vcontrast.cal.show`): the gain
    diverging from blue (the image argues against the token) through white to red, the clamped weight below it.
    `color` echoes the tokens with ANSI colours (for a terminal), else as plain `token(gain)` text."""
    from vcontrast.cal import CALConfig
    from vcontrast.cal.show import report_heatmap, report_heatmap_html, token_report
    from vcontrast.toy.grammar import PROMPTS, caption, words
    from vcontrast.toy.scenes import make_scene
    from vcontrast.viz import token_heatmap_ansi

    image, scene = make_scene(7, n_objects=2)
    swapped, wrong = swapped_caption(scene)
    config = CALConfig()
    result = {}
    for name, text in (("clean", caption(scene)), ("swapped", swapped)):
        report = token_report(model, processor, image, text, prompt=PROMPTS["caption"], config=config)
        tokens, gains = [t.text for t in report], [t.delta for t in report]
        title = f"CAL logit gain per token, {name} caption"
        picture = report_heatmap(report, alpha=config.alpha, beta=config.beta, title=title, image=image)
        save_image(picture, out / f"cal_{name}.png")
        write_text(
            out / f"cal_{name}.html", report_heatmap_html(report, alpha=config.alpha, beta=config.beta, title=title)
        )
        if color:
            echo(f"  {name:<8} {token_heatmap_ansi(tokens, gains, low=0.0, high=config.beta)}")
        else:
            echo(f"  {name:<8} {' '.join(f'{token}({gain:.1f})' for token, gain in zip(tokens, gains, strict=True))}")
        result[name] = {"text": text, "tokens": tokens, "delta": gains, "weight": [t.weight for t in report]}
    # `wrong` indexes the toy grammar's words; the model's tokens may be subwords (any `model_path`): go by characters.
    spans, at = [], 0
    for k, word in enumerate(words(swapped)):
        at = swapped.lower().index(word, at) + len(word)
        if k in wrong:
            spans.append((at - len(word), at))
    positions = [k for word in word_tokens(tokens, swapped, spans) for k in word]
    result["swapped"]["contradicted"] = [{"token": tokens[k], "delta": gains[k]} for k in positions]
    shown = ", ".join(f"{tokens[k]} {gains[k]:+.1f}" for k in positions)
    echo(f"  the swapped colour words (the image contradicts them; blue when the gain is negative): {shown}")
    return result


def run_demo(
    out: str | Path = "out",
    *,
    n_scenes: int = 4,
    n_items: int = 40,
    model_path: str | Path | None = None,
    echo: Callable[[str], None] = logger.info,
    color: bool = False,
) -> dict:
    """Run the demo and write `out/` (pictures, `cal_*.html`, `results.md`, `demo.json`); returns the summary.

    Args:
        out (`str | Path`): output folder (created).
        n_scenes (`int`): toy scenes answered with and without CRG (0 skips them).
        n_items (`int`): items per toy task in the results table (at least 1).
        model_path (`str | Path`, *optional*): a model folder; None uses the shipped toy model.
        echo (`Callable[[str], None]`): where progress lines go (the CLI passes `print`).
        color (`bool`, *optional*, defaults to `False`): ANSI colours in the echoed CAL tokens (the CLI passes
            whether its output is a terminal, so redirected output stays plain text).
    """
    # Checked first: a bad count fails before the model loads and before any picture is written.
    if isinstance(n_scenes, bool) or not isinstance(n_scenes, int) or n_scenes < 0:
        raise ValueError(f"`n_scenes` (={n_scenes!r}) has to be a non-negative integer")
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"`n_items` (={n_items!r}) has to be a positive integer")
    import torch

    from vcontrast.models.loading import load_model

    torch.manual_seed(0)
    out = Path(out)
    model, processor = load_model(model_path)  # first: a bad model folder leaves no empty output folder
    out.mkdir(parents=True, exist_ok=True)
    echo(f"model: {type(model).__name__} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters)")
    echo("CRG on toy questions (the box holds the object the question is about):")
    summary = {"crg_examples": crg_examples(model, processor, out, n_scenes, echo)}
    echo("CAL: the image's logit gain per caption token (white = 0, red >= beta, blue = the image argues against it):")
    summary["cal_heatmap"] = cal_heatmap(model, processor, out, echo, color=color)
    echo(f"results table ({n_items} test items per task, plain vs CRG):")
    summary["results"] = results_table(model, processor, out, n_items, echo)
    write_text(out / "demo.json", json.dumps(summary, indent=1, default=str))
    echo(f"wrote {out}/")
    return summary


RESULT_TASKS = ("spatial", "swap", "match", "region_vqa", "refexp")
RESAMPLES = 2000


def results_table(model, processor, out: Path, n_items: int, echo: Callable[[str], None]) -> dict:
    """Plain vs CRG (alpha 1, annotated regions) on the toy test split's five tasks, via the eval runner, with the
    CRG - plain difference and its 95% paired bootstrap interval over items (`vcontrast.toy.exp_crg.compare`).

    Refexp expressions are scored as answers to "name one object in the image ." (the toy model's own format);
    CRG re-ranks by the paper's log-ratio, the plain model scores each proposal's crop.
    """
    from vcontrast.bench.methods import get_method
    from vcontrast.bench.runner import evaluate
    from vcontrast.toy.exp_crg import VQA_MAX_NEW_TOKENS, compare, item_scores, task_metric
    from vcontrast.toy.experiments import pct, pct_delta
    from vcontrast.toy.grammar import PROMPTS
    from vcontrast.toy.tasks import make_split

    data = out / "toy_data"
    rows, metrics = [], {}
    for task in RESULT_TASKS:
        make_split(task, n_items, seed=123, split="test", out_dir=data)
        scores = {}
        for name in ("base", "crg"):
            max_new = VQA_MAX_NEW_TOKENS  # every open answer here is one word
            prompt = PROMPTS["refer"] if task == "refexp" else None  # the toy model's format of naming an object
            method = get_method(
                name, model, processor, alpha=1.0, proposer=None, max_new_tokens=max_new, rerank_prompt=prompt
            )
            folder = out / "eval" / name / task
            summary = evaluate(
                "toy", data, model=(model, processor), method=method, alpha=1.0, out_dir=folder,
                split=f"{task}_test", show_progress=False, proposer=None, max_new_tokens=max_new,
            )  # fmt: skip
            metrics[f"{name}/{task}"] = summary["metrics"]
            scores[name] = item_scores(task, data, folder)
        diff = compare(task, scores["base"], scores["crg"], RESAMPLES)
        plain, guided = (task_metric(task, {"metrics": metrics[f"{n}/{task}"]}) for n in ("base", "crg"))
        metric = "AUROC" if task == "match" else "acc@0.5" if task == "refexp" else "accuracy"
        rows.append(f"| {task} | {metric} | {pct(plain)} | {pct(guided)} | {pct_delta(diff['delta'], diff['ci'])} |")
    lines = [
        "| task | metric | plain | CRG | CRG - plain [95% CI] |",
        "|---|---|---:|---:|---|",
        *rows,
    ]
    note = f"\n{n_items} test items per task; interval: paired bootstrap over items ({RESAMPLES} resamples).\n"
    write_text(out / "results.md", "\n".join(lines) + "\n" + note)
    for line in lines:
        echo("  " + line)
    return metrics
