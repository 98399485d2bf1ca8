"""The diagnostic probes of docs/results/gates.md ("Why the relation is not learnt"), as they were run.

Run from the repository root with the shipped model's training folders in `out/toy-testbed` (`vcontrast toy train`
writes `lm/`, `vision/`, `pt/` and `snapshots/` there). Each probe trains on one core for minutes; none is part of
the tests.

    python docs/results/relational_probes.py mirror-shift out/toy-testbed/pt out/toy-testbed
    python docs/results/relational_probes.py probe out/toy-testbed/pt spatial_lr out/diag/lr --steps 300
    python docs/results/relational_probes.py probe out/toy-testbed/pt where out/diag/where --steps 1500
    python docs/results/relational_probes.py probe out/diag/where spatial_lr out/diag/lr-long --steps 3000
    python docs/results/relational_probes.py it-probe out/toy-testbed-v3/ground-2-spatial_lr out/diag/it-1e-4 \
        --steps 600 --lr 1e-4                                   # the IT mix after the grounding phases, low lr
    python docs/results/relational_probes.py it-probe out/toy-testbed-v3/ground-2-spatial_lr out/diag/it-lr25 \
        --steps 600 --lr 5e-4 --left-right-share 0.25           # the same, with left/right in every batch
    python docs/results/relational_probes.py lookup-lm out/diag/lookup      # stage 0 with reading items, then PT
    python docs/results/relational_probes.py reading-accuracy out/toy-testbed/lm out/diag/lookup/lm
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from PIL import ImageOps

from vcontrast.crg import CRG
from vcontrast.toy import train as toy_train
from vcontrast.toy.gates import _choice_scores, _items, _mirror, _where
from vcontrast.toy.grammar import PROMPTS, RELATIONS, caption, name, position
from vcontrast.toy.model import load
from vcontrast.toy.scenes import make_scene
from vcontrast.toy.tasks import BIASES, _unique

READING_SHARE = 0.3  # of stage-0 examples offered a reading item (about 2/3 of the draws yield one)


def mirror_shift(paths: list[str]) -> None:
    """The mirror test and `mirror_shift` of each model on the gates' 200 val items."""
    for path in paths:
        model, processor = load(path)
        metrics = _mirror(CRG(model.eval(), processor, alpha=0.0, mode="whole"), 200, 0, "val", 16)
        print(path, {k: round(v, 4) for k, v in metrics.items()}, flush=True)


def probe(init: str, task: str, out: str, steps: int) -> None:
    """Train projector + LM on one task only (batch 16, lr 5e-4), then score it on val items."""
    toy_train.train(
        out, stage="it", init=init, steps=steps, batch_size=16, lr=5e-4, trainable="projector+lm", mix={task: 1.0},
        warmup=30, log_every=25, save_every=100, num_threads=1,
    )  # fmt: skip
    model, processor = load(out)
    model.eval()
    lines = (Path(out) / "log.jsonl").read_text().splitlines()
    losses = [round(json.loads(line)["loss"], 3) for line in lines]
    if task == "spatial_lr":
        lr = (RELATIONS.index("left of"), RELATIONS.index("right of"))
        items = _items("spatial_lr", 60, 7, "val")
        images = [im for im, _ in items] + [ImageOps.mirror(im) for im, _ in items]
        pairs = [[it.candidates[lr[0]], it.candidates[lr[1]]] for _, it in items] * 2
        scorer = CRG(model, processor, alpha=0.0, mode="whole")
        with torch.no_grad():
            scores = _choice_scores(scorer, images, [it.prompt for _, it in items] * 2, pairs, 16)
        k = len(items)
        pref = [a - b for a, b in scores]
        acc = sum((pref[i] > 0) == (items[i][1].answer == lr[0]) for i in range(k)) / k
        flips = sum((pref[i] > 0) != (pref[k + i] > 0) for i in range(k)) / k
        result = {"accuracy": acc, "mirror_flips": flips, "mean_abs_pref": sum(abs(p) for p in pref[:k]) / k}
    else:
        with torch.no_grad():
            result = _where(model, processor, 100, 0, "val", 16)
    print(out, {k: round(v, 3) for k, v in result.items()}, "loss every 75 steps:", losses[::3], flush=True)


def _with_left_right(steps: int, share: float):
    # The recipe's IT batches, with the first `share` of every image batch replaced by two-object left/right items.
    recipe = toy_train._data_fn(None, "it", 0, None, steps)

    def fn(step: int, batch_size: int) -> list[dict]:
        batch = recipe(step, batch_size)
        if batch[0]["image"] is None:  # a text replay batch stays as it is
            return batch
        rng = random.Random(f"left-right-{step}")
        k = round(share * batch_size)
        seeds = [rng.randrange(2**31) for _ in range(k)]
        return toy_train.task_examples(seeds, mix={"spatial_lr": 1.0}, rng=rng) + batch[k:]

    return fn


def it_probe(init: str, out: str, steps: int, lr: float, left_right_share: float) -> None:
    """The recipe's IT (task mix, spatial curriculum, text replay; batch 32) at peak learning rate `lr` from `init`,
    optionally with a share of two-object left/right items in every batch, and the mirror test on its snapshots:
    does a left/right relation learnt before IT survive it?"""
    data = _with_left_right(steps, left_right_share) if left_right_share > 0 else None
    toy_train.train(
        out, stage="it", init=init, steps=steps, batch_size=32, lr=lr, trainable="projector+lm", log_every=50,
        snapshot_every=max(1, steps // 3), num_threads=1, data=data,
    )  # fmt: skip
    snapshots = sorted(Path(out, "snapshots").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    mirror_shift([init, *map(str, snapshots), out])


def reading_item(rng: random.Random) -> dict | None:
    """A text-only reading item: a train-split scene's caption, then a question answered by looking it up."""
    _, scene = make_scene(rng.randrange(2**62), n_objects=rng.randint(1, 4), bias=BIASES["shape_color"])
    objects = scene.objects
    kind = rng.choice(["where", "color", "shape"])
    if kind == "where":
        named = [(o, t) for o in objects if (t := name(o, objects)) is not None]
        if not named:
            return None
        obj, text = rng.choice(named)
        question, answer = PROMPTS["where"].format(name=text), position(obj, scene.size)
    else:
        by = "shape" if kind == "color" else "color"
        unique = _unique(objects, by)
        if not unique:
            return None
        obj = rng.choice(unique)
        question, answer = PROMPTS[kind].format(shape=obj.shape, color=obj.color), getattr(obj, kind)
    return {"image": None, "prompt": f"{caption(scene)} {question}", "answer": answer}


def _lm_data(step: int, batch_size: int) -> list[dict]:
    # The recipe's stage-0 batch, with some examples replaced by reading items; a pure function of the step.
    rng = random.Random(f"lookup-lm-{step}")
    base = toy_train._data_fn(None, "lm", 0, None, 1250)(step, batch_size)
    out = []
    for example in base:
        item = reading_item(rng) if rng.random() < READING_SHARE else None
        out.append(item if item is not None else example)
    return out


def lookup_lm(out: str) -> None:
    """Stage 0 with reading items, the shipped vision tower (its stage leaves LM and projector alone), PT, probes."""
    lm = toy_train.train(
        f"{out}/lm", stage="lm", steps=1250, lr=1e-3, trainable="lm", model_kwargs=toy_train.RECIPE_MODEL,
        data=_lm_data, batch_size=32, seed=0, num_threads=1,
    )  # fmt: skip
    vision = Path(out) / "vision"
    if not (vision / "config.json").is_file():
        model, processor = load(lm)
        shipped, _ = load("out/toy-testbed/vision")
        model.model.vision_tower.load_state_dict(shipped.model.vision_tower.state_dict())
        model.save_pretrained(vision)
        processor.save_pretrained(vision)
    pt = toy_train.train(
        f"{out}/pt", stage="pt", init=vision, steps=600, lr=1e-3, trainable="projector", batch_size=32, seed=0,
        num_threads=1,
    )  # fmt: skip
    probe(str(pt), "spatial_lr", f"{out}/probe_spatial_lr", 300)
    probe(str(pt), "where", f"{out}/probe_where", 300)


def reading_accuracy(paths: list[str]) -> None:
    """Teacher-forced exact-answer accuracy of each language model on 200 reading items."""
    rng = random.Random("reading-eval")
    items = [x for x in (reading_item(rng) for _ in range(400)) if x is not None][:200]
    for path in paths:
        model, processor = load(path)
        model.eval()
        hits: dict[str, list[bool]] = {}
        for i in range(0, len(items), 25):
            chunk = items[i : i + 25]
            batch = toy_train.text_only_batch(processor, chunk)
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            pred, labels = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
            for j, example in enumerate(chunk):
                mask = labels[j] != -100
                kind = "where" if "where" in example["prompt"] else "attribute"
                hits.setdefault(kind, []).append(bool((pred[j][mask] == labels[j][mask]).all()))
        print(path, {k: f"{sum(v) / len(v):.3f} (n={len(v)})" for k, v in hits.items()}, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("mirror-shift").add_argument("models", nargs="+")
    p = sub.add_parser("probe")
    p.add_argument("init")
    p.add_argument("task", choices=["spatial_lr", "where"])
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=300)
    p = sub.add_parser("it-probe")
    p.add_argument("init")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--left-right-share", type=float, default=0.0)
    sub.add_parser("lookup-lm").add_argument("out")
    sub.add_parser("reading-accuracy").add_argument("models", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "mirror-shift":
        mirror_shift(args.models)
    elif args.command == "probe":
        probe(args.init, args.task, args.out, args.steps)
    elif args.command == "it-probe":
        it_probe(args.init, args.out, args.steps, args.lr, args.left_right_share)
    elif args.command == "lookup-lm":
        lookup_lm(args.out)
    else:
        reading_accuracy(args.models)


if __name__ == "__main__":
    main()
