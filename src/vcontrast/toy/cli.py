"""The `vcontrast toy ...` commands: typed functions whose docstrings become `--help` (registered in `vcontrast.cli`).

- `experiment_command`: `vcontrast toy experiment NAME`, one of the toy experiments (`vcontrast.toy.experiments`).
- `train_command`: `vcontrast toy train`, the toy VLM's four-stage recipe (`vcontrast.toy.train.train_recipe`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# The shipped test-bed model's gates (`vcontrast toy gates --json`), which the full experiments' reports cite.
DEFAULT_GATES = Path("docs/results/gates.json")


def experiment_command(
    name: Annotated[str, typer.Argument(help="The experiment: cal_noise, cal_scratch, crg or cal_crg.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for NAME.md, NAME.json and NAME.png; default: out/experiments/NAME (the committed results "
            "are in docs/results)."
        ),
    ] = None,
    budget: Annotated[
        str,
        typer.Option(
            help="'full' (docs/results/PLAN.md's numbers; cal_noise is ~200 runs of 20-27 min each per worker on 2 "
            "CPU cores, run it by --tier) or 'tiny' (seconds, on a tiny model built on the spot; measures nothing)."
        ),
    ] = "full",
    work_dir: Annotated[
        Path, typer.Option(help="Training runs and evaluation folders; a rerun with the same budget reuses them.")
    ] = Path("out/experiments"),
    model: Annotated[
        Path | None,
        typer.Option(help="Toy model folder for 'crg' (save_pretrained layout); default: the shipped one."),
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(
            help="Stage-1 model of cal_noise / cal_scratch / cal_crg: the recipe's OUT/vision folder (text-trained "
            "LM + vision tower); a finished OUT/pt next to it is reused as alignment seed 0. Default: "
            "out/toy-testbed/vision. Not with --budget tiny, which builds a tiny one."
        ),
    ] = None,
    tier: Annotated[
        int | None,
        typer.Option(
            help="cal_noise / cal_scratch: train the runs of tiers 1..TIER only (PLAN.md's run order; 0: train "
            "nothing, report the completed runs). Default: every tier."
        ),
    ] = None,
    gates: Annotated[
        Path | None,
        typer.Option(
            help="A `vcontrast toy gates --json` file of the test-bed model: the report names the failed gates "
            "behind each claim (PLAN.md). Default: docs/results/gates.json where it exists, for the full budget."
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads; default: the budget's (2).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="cal_noise / cal_scratch: processes sharing the runs, THREADS // WORKERS torch threads each (on "
            "CPU, 2 workers of 1 thread train twice as many runs as 1 of 2). Default: 1."
        ),
    ] = None,
) -> None:
    """Run a toy-world experiment and print its results table (markdown).

    cal_noise (E2 of docs/results/PLAN.md): CAL vs MLE under three label-noise types at 0/30/60%, IT on a fixed
    pool after a shared alignment stage, 3 x 2 seed pairs; resumable, run by tiers. cal_scratch (E3): the same
    without the alignment stage. crg (E1): the toy model (--model, default the shipped one) plain, with overlay,
    CRG, CRG + overlay and VCD on spatial, swap, match and region VQA, and refexp re-ranked by CRG vs crops, random
    and oracle (500 items per task, paired bootstrap intervals; resumes). cal_crg: the CAL and MLE models of
    cal_noise with and without CRG.
    """
    import dataclasses
    import logging

    from transformers.utils import logging as hf_logging

    from vcontrast.toy.experiments import EXPERIMENTS, get_budget, run_experiment

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    chosen = get_budget(budget)
    if threads is not None:
        chosen = dataclasses.replace(chosen, num_threads=threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per training run and evaluation otherwise
    cal = name in ("cal_noise", "cal_scratch", "cal_crg")
    if base is not None and (not cal or model is not None):
        raise ValueError(
            "--base is the stage-1 model of cal_noise, cal_scratch and cal_crg; do not combine it with --model"
        )
    if tier is not None and name not in ("cal_noise", "cal_scratch"):
        raise ValueError(f"--tier applies to cal_noise and cal_scratch, not {name}")
    if workers is not None and name not in ("cal_noise", "cal_scratch"):
        raise ValueError(f"--workers applies to cal_noise and cal_scratch, not {name}")
    options = {k: v for k, v in (("tier", tier), ("workers", workers)) if v is not None}
    out = work_dir / name if out is None else out
    if gates is None and budget == "full" and DEFAULT_GATES.is_file():
        gates = DEFAULT_GATES
    result = run_experiment(
        name,
        out_dir=out,
        budget=chosen,
        work_dir=work_dir,
        model=base if cal and base is not None else model,
        gates=gates,
        **options,
    )
    print(result.table)
    print(f"\nwall time: {result.data['wall_s']:.0f} s")
    for path in result.files:
        print(f"wrote {path}")


def parse_phases(text: str) -> list[tuple[str, int]]:
    """`--grounding`'s "TASK:STEPS,..." as (task, steps) pairs ("" gives none); a malformed phase is named."""
    phases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        task, _, steps = part.partition(":")
        if not steps.strip().isdigit():
            raise typer.BadParameter(f"phase {part!r} must be TASK:STEPS, e.g. 'where:1500'", param_hint="--grounding")
        phases.append((task.strip(), int(steps)))
    return phases


def train_command(
    out: Annotated[Path, typer.Option(help="Output folder (loadable with vcontrast.toy.load(OUT)).")] = Path(
        "out/toy-model"
    ),
    lm_steps: Annotated[
        int | None, typer.Option(help="Stage 0 (language model on text alone) steps; default: the recipe's.")
    ] = None,
    vision_steps: Annotated[
        int | None, typer.Option(help="Stage 1 (vision tower on object attributes) steps; default: the recipe's.")
    ] = None,
    pt_steps: Annotated[
        int | None, typer.Option(help="Stage 2 (projector on captions) steps; default: the recipe's.")
    ] = None,
    it_steps: Annotated[
        int | None, typer.Option(help="Stage 3 (mixed toy tasks) steps; default: the recipe's.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step; default: the recipe's.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (IT uses half); default: the recipe's.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the initialisation and the data.")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads (1 is faster when other jobs share the cores).")] = 2,
    eval_items: Annotated[int, typer.Option(help="Test items per task for the final evaluation (0: none).")] = 200,
    grounding: Annotated[
        str,
        typer.Option(
            help="IT grounding phases before the task mix, TASK:STEPS,... (one task each, batch 16), e.g. "
            "'where:1500,spatial_lr:3000' (test bed v3's, docs/results/gates.md); default: none, as the shipped model."
        ),
    ] = "",
) -> None:
    """Train the toy VLM with vcontrast's recipe (LM on text, vision tower, projector on captions, mixed toy tasks).

    An interrupted run resumes where it stopped when called again with the same OUT. To ship the result, copy OUT's
    config, weights and processor files into src/vcontrast/toy/weights/.
    """
    import logging

    from vcontrast.toy.model import load
    from vcontrast.toy.train import evaluate, train_recipe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = {"lm_steps": lm_steps, "vision_steps": vision_steps, "pt_steps": pt_steps, "it_steps": it_steps}
    options["batch_size"] = batch_size
    options = {k: v for k, v in (options | {"lr": lr}).items() if v is not None}
    path = train_recipe(out, seed=seed, num_threads=threads, grounding=parse_phases(grounding), **options)
    print(f"model: {path}")
    if eval_items > 0:
        model, processor = load(path)
        for key, value in evaluate(model, processor, n=eval_items).items():
            print(f"{key:<40} {value:.4f}" if isinstance(value, float) else f"{key:<40} {value}")


def gates_command(
    model: Annotated[
        Path | None, typer.Option(help="Toy model folder (save_pretrained layout); default: the shipped one.")
    ] = None,
    n: Annotated[int, typer.Option(help="Items per task.")] = 200,
    split: Annotated[str, typer.Option(help="'val' (the gates' split) or 'test' (reported results only).")] = "val",
    seed: Annotated[int, typer.Option(help="Item seeds seed * 1,000,000 + i.")] = 0,
    curve: Annotated[
        bool,
        typer.Option(
            help="Also measure MODEL's grounding phases and IT snapshots (a `vcontrast toy train` output): "
            "learning curve."
        ),
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every metric to this JSON file.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Check the toy model against the test bed's gates (issue #14) and print them as a table.

    Mirror test, spatial accuracy and its prior gap, match AUROC, "where is" accuracy, swap accuracy, and CAL's logit
    gains on glue, visual and contradicted words (`vcontrast.toy.gates`). Exits with status 1 if a gate fails.
    """
    import json

    import torch

    from vcontrast.toy.gates import GATES, check, gates_table, learning_curve, measure
    from vcontrast.toy.model import load
    from vcontrast.toy.tasks import SPLITS

    if split not in SPLITS:
        raise ValueError(f"`--split` (={split!r}) must be one of {SPLITS}")
    torch.set_num_threads(threads)
    loaded, processor = load(model)
    metrics = measure(loaded, processor, n=n, seed=seed, split=split)
    results = check(metrics)
    print(gates_table(results))
    shift = metrics["mirror_shift"]
    print(f"\nmirror shift towards the gold relation: {shift:+.3f} nats (not a gate; > 0: partly learnt)")
    data: dict = {"model": str(model or "shipped"), "n": n, "split": split, "seed": seed, "metrics": metrics}
    if curve:
        if model is None:
            raise ValueError("`--curve` needs `--model`, a `vcontrast toy train` output folder with snapshots/")
        points = learning_curve(model, n=n, seed=seed, split=split)
        keys = [g.key for g in GATES] + ["mirror_shift"]
        print("\nlearning curve (grounding phases, then IT steps: gate metrics)\n")
        print("| phase | step | " + " | ".join(keys) + " |")
        print("|---|---:|" + "---:|" * len(keys))
        for point in points:
            values = " | ".join(f"{point[k]:.3f}" for k in keys)
            print(f"| {point['phase']} | {int(point['step'])} | {values} |")
        data["curve"] = points
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=1) + "\n")
    failed = [r.gate.key for r in results if not r.passed]
    if failed:
        print(f"\nfailed gates: {', '.join(failed)}")
        raise typer.Exit(1)
