"""The `vcontrast eval` command: a typed function whose docstring becomes `--help` (registered in `vcontrast.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from vcontrast.crg.cli import ImageBackendOption


def eval_command(
    benchmark: Annotated[
        str,
        typer.Option(help="Benchmark: whatsup, sugarcrepe, vipbench, seetrue, refcoco, refcoco+, refcocog or toy."),
    ],
    data_dir: Annotated[
        Path, typer.Option(help="Folder with the benchmark's files in their official layout (see docs/eval.md).")
    ],
    model: Annotated[
        str | None, typer.Option(help="Checkpoint folder (save_pretrained layout); default: the toy model.")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="'base' (the plain model), 'crg', or a baseline: 'overlay' (boxes drawn on the image), "
            "'crg+overlay', 'vcd' (contrast with a noised image), 'no-image' (CRG contrasting with no image)."
        ),
    ] = "base",
    alpha: Annotated[
        float, typer.Option(help="CRG guidance strength (methods crg, crg+overlay, vcd, no-image; see docs/eval.md).")
    ] = 1.0,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N items (per split).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder; rerunning into it resumes.")] = Path("out/eval"),
    split: Annotated[str | None, typer.Option(help="One split of the benchmark; default: the loader's.")] = None,
    batch_size: Annotated[int, typer.Option(help="Items per model call.")] = 8,
    proposer: Annotated[
        str,
        typer.Option(
            help="Region proposer for items without regions: grounding-dino, owlv2, a registered name, or 'none' "
            "(black out the whole image instead)."
        ),
    ] = "grounding-dino",
    proposer_model: Annotated[
        str | None, typer.Option(help="Checkpoint folder of the proposer (for offline use).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length for open-answer tasks (greedy).")] = 32,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (items/s).")] = True,
    proposals: Annotated[
        str | None,
        typer.Option(
            help="RefCOCO/+/g: 'gt' (the image's COCO boxes, default), 'proposer' (the region proposer's boxes), or a "
            "detections JSON in MAttNet ({det_id, box, image_id, ...}) or COCO results ({image_id, bbox, ...}) format."
        ),
    ] = None,
    split_by: Annotated[
        str | None, typer.Option(help="RefCOCO/+/g: refer's splitBy: unc, google (RefCOCO, RefCOCOg) or umd.")
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option(help="SugarCrepe, RefCOCO/+/g: folder of the COCO images, if not in --data-dir.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the predictions of an earlier run in --out and start over.")
    ] = False,
    rerank_prompt: Annotated[
        str | None,
        typer.Option(
            help="Referring expressions: the prompt an expression is scored as the answer to (default: "
            "'Describe the image.'), e.g. 'name one object in the image .' for the toy model."
        ),
    ] = None,
    image_backend: ImageBackendOption = None,
) -> None:
    """Evaluate a model on a benchmark from local files, with or without CRG; prints a metrics table.

    Predictions go to OUT/predictions.jsonl as they are made; rerun with the same --out to resume (refused when the
    data files, model, method or options differ from the run in OUT; --overwrite starts over). Metrics go to
    OUT/metrics.json. Every data row and image is checked before the model loads.

    Several processes: accelerate launch --num_processes N -m vcontrast.cli eval ... (on a machine without GPUs add
    --multi_gpu to the launcher's options). The processes split the items; process 0 merges and scores.
    """
    from vcontrast.bench.runner import METRICS_FILE, evaluate, format_table

    try:
        summary = evaluate(
            benchmark,
            data_dir,
            model=model,
            method=method,
            alpha=alpha,
            limit=limit,
            out_dir=out,
            split=split,
            batch_size=batch_size,
            show_progress=progress,
            proposer=None if proposer.lower() == "none" else proposer,
            proposer_model=proposer_model,
            max_new_tokens=max_new_tokens,
            proposals=proposals,
            split_by=split_by,
            image_root=image_root,
            overwrite=overwrite,
            rerank_prompt=rerank_prompt,
            image_backend=image_backend,
        )
    except (ValueError, FileNotFoundError) as e:
        _user_error_or_raise(e)
    if not _is_main_process():
        return
    print(format_table(summary))
    print(f"predictions: {out / summary['predictions']}")
    print(f"metrics: {out / METRICS_FILE}")
    for path in summary.get("grader_files", []):
        print(f"ViP-Bench grader file: {out / path}")
    if "metrics_error" in summary:
        if summary["metrics"]:  # some entries are undefined on these items (e.g. AUROC of one class): left out
            print(f"note: left out: {summary['metrics_error']}", file=sys.stderr)
        else:
            print(f"error: no metrics: {summary['metrics_error']}", file=sys.stderr)
            raise typer.Exit(code=1)


def _user_error_or_raise(error: Exception) -> NoReturn:
    # A user error (vcontrast's own check, or a file error naming the path) is one or two lines on stderr and exit
    # status 2; anything else (e.g. a ValueError from inside torch) is a bug: re-raised for `vcontrast.cli.run` to
    # show with its traceback.
    from vcontrast.cli import is_user_error

    if not is_user_error(error):
        raise error
    print(short_error(error), file=sys.stderr)
    raise typer.Exit(code=2) from error


def short_error(error: Exception) -> str:
    """The one- or two-line form of a user error for the terminal: a loader's multi-line "Expected layout" hint
    becomes a pointer to docs/eval.md (the full text stays in the exception for Python callers).

    Examples:

    ```python
    >>> print(short_error(ValueError("seetrue: missing file d/S.csv. Expected layout:\\n  <data_dir>/S.csv")))
    error: seetrue: missing file d/S.csv.
      expected layout: docs/eval.md, 'The benchmarks'
    ```
    """
    message = str(error)
    head, sep, _ = message.partition(" Expected layout:\n")
    if sep:
        return f"error: {head}\n  expected layout: docs/eval.md, 'The benchmarks'"
    return f"error: {message}"


# Every argument, --help included, goes to lmms-eval.
LMMS_EVAL_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def lmms_eval_command(ctx: typer.Context) -> None:
    """Run lmms-eval with CRG registered as the model `vcontrast_crg` (the default --model); every argument goes to
    lmms-eval, e.g. --tasks mme --model_args pretrained=CKPT,alpha=1.0,contrast=blackout,proposer=grounding-dino.

    Needs the optional extra: pip install 'vcontrast[lmms]'. model_args: pretrained, alpha, contrast
    (blackout | no-image | noise), proposer, proposer_model, noise_step, max_new_tokens (see docs/eval.md).
    """
    from vcontrast.bench.lmms import run_lmms_eval

    try:
        code = run_lmms_eval(list(ctx.args))
    except (ValueError, FileNotFoundError) as e:
        _user_error_or_raise(e)
    if code:
        print("error: lmms-eval produced no results (see its log above)", file=sys.stderr)
    raise typer.Exit(code=code)


def _is_main_process() -> bool:
    # Only process 0 prints under `accelerate launch` (every process returns the same summary).
    import os

    return os.environ.get("RANK", "0") == "0"
