"""CAL commands for the `vcontrast` command line, one typed function each; their docstrings become `--help`.

- `cal_app`: the `vcontrast cal ...` group: `precompute` (offline weights beside the data), `show` (one image and
  text, token by token, with a heatmap) and `audit` (a dataset's samples, most suspicious first).
- `train`: `vcontrast train --data DATA.jsonl`, fine-tuning with CAL or MLE ([`vcontrast.cal.finetune`]).

`--model` defaults to the toy VLM shipped with vcontrast. Heavy imports (torch, transformers) happen inside the
commands; bad input ends in a usage error that names the value.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from vcontrast.crg.cli import ImageBackendOption

cal_app = typer.Typer(
    help="CAL (Contrastive ALignment): token weights from the image's logit gain: precompute, show, audit.",
    no_args_is_help=True,
)

DataArgument = Annotated[Path, typer.Argument(help="LLaVA-style data: a JSON array or JSON lines of conversations.")]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", help="Folder or hub name of a supported VLM; default: the toy model shipped with vcontrast."
    ),
]
AlphaOption = Annotated[float, typer.Option(help="Lower clamp of the logit gain (weight of non-visual tokens).")]
BetaOption = Annotated[float, typer.Option(help="Upper clamp of the logit gain.")]
WindowOption = Annotated[int, typer.Option(help="Average-pooling window over neighbouring label tokens (odd).")]
ContrastOption = Annotated[
    str,
    typer.Option(
        help="Contrast condition: 'none' (no image), 'attention_mask' (the paper's form), 'patch:RATIO', "
        "'blur:SIGMA' or 'noise:STEP'."
    ),
]
ImageFolderOption = Annotated[
    Path | None, typer.Option(help="Folder that relative image paths resolve against; default: the data's folder.")
]
BatchSizeOption = Annotated[int, typer.Option(help="Samples per forward pass.")]
LimitOption = Annotated[
    int | None, typer.Option(help="Stop after the first N samples (a rerun without it resumes and finishes).")
]
MaxLengthOption = Annotated[int | None, typer.Option(help="Cut longer sequences to this many tokens.")]
DeviceOption = Annotated[str | None, typer.Option(help="Where to run the model, e.g. 'cuda'; default: CPU.")]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar.")]


@contextmanager
def _usage_errors():
    # Library errors name the bad value; show them as usage errors rather than tracebacks. Only vcontrast's own
    # checks and file errors (`vcontrast.cli.is_user_error`): any other ValueError is a bug and keeps its traceback.
    from vcontrast.cli import is_user_error

    try:
        yield
    except (ValueError, FileNotFoundError) as error:
        if not is_user_error(error):
            raise
        raise typer.BadParameter(str(error)) from error


# `vcontrast.cal.stages.LORA_TARGETS`, repeated so that `--help` needs no torch import (a test keeps them equal).
LORA_TARGETS_DEFAULT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _config(alpha: float, beta: float, window: int, contrast: str, normalize: str = "batch"):
    from vcontrast.cal.config import CALConfig

    with _usage_errors():
        return CALConfig(alpha=alpha, beta=beta, window=window, contrast=contrast, normalize=normalize)


def _load(model: str | None, device: str | None = None, image_backend: str | None = None):
    from vcontrast.models.loading import load_model

    with _usage_errors():
        return load_model(model, device=device, image_backend=image_backend)


def _prepare(
    data: Path, out: Path | None, suffix: str, config, model, device, image_backend, image_folder, limit, max_length
):
    # The shared set-up of `precompute` and `audit`: (examples, their total before --limit, output path, model,
    # processor, collator).
    from vcontrast.cal.data import ConversationCollator, read_conversations

    if limit is not None and limit < 1:
        raise typer.BadParameter(f"`--limit` (={limit}) has to be a positive integer")
    with _usage_errors():
        examples = read_conversations(data, image_folder)
    out = out if out is not None else data.with_name(f"{data.stem}{suffix}")
    vlm, processor = _load(model, device, image_backend)
    with _usage_errors():
        collate = ConversationCollator(
            processor, contrast=config.contrast if config.uses_pixels else None, max_length=max_length
        )
    return examples[:limit], len(examples), out, vlm, processor, collate


def _stopped_early(done: int, total: int) -> None:
    if done < total:
        print(f"stopped after {done} of {total} samples (--limit); run again without --limit to finish")


@cal_app.command("precompute")
def precompute(
    data: DataArgument,
    out: Annotated[
        Path | None,
        typer.Option(help="Output .jsonl (or .safetensors); default: beside DATA, named DATA.cal.jsonl."),
    ] = None,
    model: ModelOption = None,
    alpha: AlphaOption = 1.0,
    beta: BetaOption = 5.0,
    window: WindowOption = 3,
    contrast: ContrastOption = "none",
    batch_size: BatchSizeOption = 8,
    limit: LimitOption = None,
    image_folder: ImageFolderOption = None,
    max_length: MaxLengthOption = None,
    device: DeviceOption = None,
    image_backend: ImageBackendOption = None,
    progress: ProgressOption = True,
) -> None:
    """Store CAL's per-token logit gains and weights beside DATA, computed once with a frozen reference model.

    For `vcontrast train --cal-weights` (training then runs no contrast pass). Resumable: a rerun skips the samples
    already stored. The paper (appendix A.5) finds weights from a pretrained-only model work as well as from the
    trained one. A .safetensors output is written at the end of a run (a rerun after a finished run recomputes it).
    """
    from vcontrast.cal.precompute import load_weights, precompute_weights

    config = _config(alpha, beta, window, contrast)
    examples, total, out, vlm, _, collate = _prepare(
        data, out, ".cal.jsonl", config, model, device, image_backend, image_folder, limit, max_length
    )
    with _usage_errors():
        path = precompute_weights(vlm, examples, collate, out, config, batch_size=batch_size, show_progress=progress)
    stored = load_weights(path)
    tokens = sum(int(v["delta"].numel()) for v in stored.values())

    def mean(values) -> float:
        return sum(float(v.sum()) for v in values) / tokens if tokens else math.nan

    delta = mean(v["delta"] for v in stored.values())
    negative = mean((v["delta"] < 0).float() for v in stored.values())
    weight = mean(v["weights"] for v in stored.values())
    print(f"CAL weights for {len(stored)} samples, {tokens} label tokens: {path}")
    print(f"mean delta {delta:.4f}, share of tokens with delta < 0: {negative:.4f}, mean weight {weight:.4f}")
    print(f"alpha={config.alpha:g} beta={config.beta:g} window={config.window} contrast={contrast}")
    _stopped_early(len(examples), total)


def _token_table(report, alpha: float, beta: float, color: bool) -> str:
    from vcontrast.viz import token_heatmap_ansi

    lines = [f"{'token':<16} {'delta':>8} {'weight':>7}"]
    for t in report:
        cell, delta, weight = f"{repr(t.text)[1:-1]:<16}", f"{t.delta:>8.3f}", f"{t.weight:>7.3f}"
        if color:  # the token and its gain on the gain's diverging colour, the weight on the weight's
            cell, delta = (token_heatmap_ansi([x], [t.delta], low=0.0, high=beta) for x in (cell, delta))
            weight = token_heatmap_ansi([weight], [t.weight], low=alpha, high=beta)
        lines.append(f"{cell} {delta} {weight}")
    return "\n".join(lines)


@cal_app.command("show")
def show(
    image: Annotated[Path, typer.Argument(help="The image file.")],
    text: Annotated[str, typer.Argument(help="The text to weigh (an answer or a caption).")],
    prompt: Annotated[str, typer.Option(help="The user's question TEXT answers.")] = "Describe the image.",
    model: ModelOption = None,
    out: Annotated[Path, typer.Option(help="Where to write the PNG heatmap.")] = Path("out/cal_show.png"),
    html: Annotated[Path | None, typer.Option(help="Also write an HTML heatmap here.")] = None,
    alpha: AlphaOption = 1.0,
    beta: BetaOption = 5.0,
    window: WindowOption = 3,
    contrast: Annotated[str, typer.Option(help="'none' (no image) or 'attention_mask' (the paper's form).")] = "none",
    color: Annotated[
        bool | None, typer.Option(help="Colour the tokens (ANSI); default: when printing to a terminal.")
    ] = None,
    device: DeviceOption = None,
    image_backend: ImageBackendOption = None,
) -> None:
    """Print each token of TEXT with its logit gain from IMAGE and its CAL weight; save PNG/HTML heatmaps.

    TEXT is scored as the answer to --prompt. Each token is drawn on the colour of its raw logit gain, as in the
    paper's Figure 2a: blue where the image argues against it (gain < 0), white at 0, red at beta and above; below
    it, its CAL weight (the gain clamped to \\[alpha, beta], pooled) from white (alpha) to red (beta). A legend
    explains both scales."""
    import sys

    from vcontrast.atomic import check_output_file, save_image, write_text
    from vcontrast.cal.show import report_heatmap, report_heatmap_html, token_report
    from vcontrast.regions import open_image

    with _usage_errors():
        check_output_file(out, "--out", (".png",), create_folder=True)
        if html is not None:
            check_output_file(html, "--html", (".html", ".htm"), create_folder=True)
        picture = open_image(image)
    config = _config(alpha, beta, window, contrast)
    vlm, processor = _load(model, device, image_backend)
    with _usage_errors():
        report = token_report(vlm, processor, picture, text, prompt=prompt, config=config)
    color = sys.stdout.isatty() if color is None else color
    print(_token_table(report, config.alpha, config.beta, color))
    title = f"CAL logit gain and weight (alpha {config.alpha:g}, beta {config.beta:g}): {prompt}"
    scale = {"alpha": config.alpha, "beta": config.beta}
    save_image(report_heatmap(report, title=title, image=picture, **scale), out)
    print(f"heatmap written to {out}")
    if html is not None:
        write_text(html, report_heatmap_html(report, title=title, **scale))
        print(f"HTML heatmap written to {html}")


@cal_app.command("audit")
def audit(
    data: DataArgument,
    out: Annotated[
        Path | None, typer.Option(help="Output JSONL; default: beside DATA, named DATA.audit.jsonl.")
    ] = None,
    model: ModelOption = None,
    contrast: ContrastOption = "none",
    batch_size: BatchSizeOption = 8,
    limit: LimitOption = None,
    top: Annotated[int, typer.Option(help="How many of the most suspicious samples to print.")] = 10,
    threshold: Annotated[
        float,
        typer.Option(help="A sample counts as suspicious when more than this share of its tokens has delta < 0."),
    ] = 0.5,
    image_folder: ImageFolderOption = None,
    max_length: MaxLengthOption = None,
    device: DeviceOption = None,
    image_backend: ImageBackendOption = None,
    progress: ProgressOption = True,
) -> None:
    """Score how much the image supports each sample of DATA, most suspicious samples first.

    Per sample, over the answer tokens (template tokens such as end-of-turn left out): the mean logit gain from the
    image (mean_delta), the share of tokens with a negative gain (frac_negative: the image argues against them,
    candidates for hallucinated or mismatched text) and those tokens with their text (contradicted). Writes JSONL
    sorted most suspicious first, prints a summary and the top samples with their contradicted tokens. Resumable: a
    rerun skips the samples already scored."""
    from vcontrast.cal.precompute import audit as run_audit
    from vcontrast.cal.precompute import summarize_audit

    config = _config(1.0, 5.0, 3, contrast)
    examples, total, out, vlm, processor, collate = _prepare(
        data, out, ".audit.jsonl", config, model, device, image_backend, image_folder, limit, max_length
    )
    with _usage_errors():
        records = run_audit(
            vlm, examples, collate, out, config, batch_size=batch_size, show_progress=progress, tokenizer=processor
        )
    summary = summarize_audit(records, threshold=threshold)
    print(
        f"audited {summary['samples']} samples, {summary['tokens']} tokens: mean delta {summary['mean_delta']:.4f}, "
        f"share of tokens with delta < 0: {summary['frac_negative']:.4f}; "
        f"{summary['suspicious']} samples above {threshold:g}"
    )
    print(f"records (most suspicious first): {out}")
    if top > 0 and records:
        print(f"{'id':<20} {'frac_neg':>8} {'mean_delta':>10}  contradicted tokens (delta < 0)")
        for r in records[:top]:
            tokens = ", ".join(f"{c['text'].strip()!r} ({c['delta']:.2f})" for c in r["contradicted"]) or "-"
            print(f"{r['id']:<20} {r['frac_negative']:>8.3f} {r['mean_delta']:>10.3f}  {tokens}")
    _stopped_early(len(examples), total)


def train(
    data: Annotated[Path, typer.Option(help="LLaVA-style training data (JSON array or JSON lines).")],
    model: ModelOption = None,
    method: Annotated[str, typer.Option(help="'cal' (CAL's weighted loss) or 'mle' (plain cross-entropy).")] = "cal",
    output_dir: Annotated[
        Path, typer.Option(help="Checkpoints (checkpoint-N) and the final model, loadable with --model OUTPUT_DIR.")
    ] = Path("out/train"),
    epochs: Annotated[float, typer.Option(help="Passes over the data (unless --max-steps is set).")] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps; overrides --epochs when > 0.")] = -1,
    lr: Annotated[
        float,
        typer.Option(
            help="Peak learning rate. LLaVA: 1e-3 for --stage pt, 2e-5 for it. The toy model trains at ~5e-4."
        ),
    ] = 2e-5,
    lr_scheduler: Annotated[
        str,
        typer.Option(help="transformers' lr_scheduler_type: 'linear' (default), 'cosine' (LLaVA's), 'constant', ..."),
    ] = "linear",
    warmup_ratio: Annotated[
        float, typer.Option(help="Share of the steps spent warming the lr up from 0 (LLaVA: 0.03).")
    ] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Samples per device per micro-batch.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    alpha: AlphaOption = 1.0,
    beta: BetaOption = 5.0,
    window: WindowOption = 3,
    contrast: ContrastOption = "none",
    normalize: Annotated[
        str,
        typer.Option(
            help="'batch' (sum(w*CE)/sum(w) over the step, the official code's) or 'sample' (the paper's Eq. 5)."
        ),
    ] = "batch",
    cal_weights: Annotated[
        Path | None,
        typer.Option(help="Weights from `vcontrast cal precompute` on DATA: no contrast pass in training."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --output-dir.")] = False,
    seed: Annotated[int, typer.Option(help="Seeds the data order and dropout.")] = 0,
    save_steps: Annotated[int, typer.Option(help="Write a checkpoint every this many steps.")] = 500,
    logging_steps: Annotated[int, typer.Option(help="Log the loss every this many steps.")] = 10,
    image_folder: ImageFolderOption = None,
    max_length: MaxLengthOption = None,
    bf16: Annotated[bool, typer.Option(help="Train in bfloat16 mixed precision (GPU).")] = False,
    stage: Annotated[
        str,
        typer.Option(
            help="'pt': the projector only, on LLaVA's plain format (image + caption); 'it': projector + language "
            "model, vision tower frozen (or see --tower-lr-ratio); 'all': every parameter."
        ),
    ] = "it",
    tower_lr_ratio: Annotated[
        float | None,
        typer.Option(help="The vision tower's learning rate as a fraction of --lr (0 = frozen; 'it' and 'all')."),
    ] = None,
    lora_r: Annotated[
        int, typer.Option(help="LoRA rank on the language model (0 = off); the projector trains in full.")
    ] = 0,
    lora_targets: Annotated[
        str, typer.Option(help="Comma-separated layer names LoRA adapts in the language model.")
    ] = ",".join(LORA_TARGETS_DEFAULT),
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in the backward pass (less memory, ~30% slower).")
    ] = False,
    eval_data: Annotated[
        Path | None, typer.Option(help="An eval set in the format of --data, evaluated every --eval-steps.")
    ] = None,
    eval_steps: Annotated[int, typer.Option(help="Evaluate on --eval-data every this many steps.")] = 500,
    image_backend: ImageBackendOption = None,
) -> None:
    """Fine-tune a VLM on LLaVA-style conversations (image path + human/gpt turns) with CAL or plain MLE.

    Labels cover the assistant turns only (every turn of a multi-turn conversation). Uses transformers' Trainer
    (CALTrainer for --method cal): checkpoints every --save-steps, --resume continues from the last one, and the final
    model and processor are saved in --output-dir (use it as --model). Trains the toy model by default. The CAL
    paper's recipe is two runs: --stage pt --method mle (projector alignment), then --stage it --method cal.
    """
    import torch
    from transformers import TrainingArguments

    from vcontrast.cal.finetune import METHODS, finetune

    if method not in METHODS:
        raise typer.BadParameter(f"`--method` (={method!r}) has to be one of {', '.join(METHODS)}")
    if method != "cal" and cal_weights is not None:
        raise typer.BadParameter(f"`--cal-weights` only applies to --method cal, not {method!r}")
    if stage == "pt" and cal_weights is not None:
        raise typer.BadParameter(
            "`--cal-weights` with `--stage pt`: `cal precompute` computes weights on the chat-template format, while "
            "--stage pt trains on LLaVA's plain format (other tokens); drop --cal-weights (CAL then runs its "
            "contrast pass in training)"
        )
    if not 0 <= warmup_ratio < 1:
        raise typer.BadParameter(f"`--warmup-ratio` (={warmup_ratio}) has to be in [0, 1)")
    config = _config(alpha, beta, window, contrast, normalize) if method == "cal" else None
    with _usage_errors():
        args = TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=epochs,
            max_steps=max_steps,
            learning_rate=lr,
            lr_scheduler_type=lr_scheduler,
            warmup_steps=warmup_ratio,  # transformers 5: a float in [0, 1) is a share of the steps
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=grad_accum,
            save_strategy="steps",
            save_steps=save_steps,
            logging_steps=logging_steps,
            seed=seed,
            bf16=bf16,
            report_to="none",
            remove_unused_columns=False,
            activation_checkpointing=gradient_checkpointing,
            eval_strategy="steps" if eval_data is not None else "no",
            eval_steps=eval_steps if eval_data is not None else None,
            dataloader_pin_memory=torch.cuda.is_available(),  # else a warning per run on a CPU machine
        )
        result = finetune(
            data,
            args,
            model=model,
            method=method,
            cal_config=config,
            cal_weights=cal_weights,
            image_folder=image_folder,
            max_length=max_length,
            resume=resume,
            stage=stage,
            tower_lr_ratio=tower_lr_ratio,
            lora_r=lora_r,
            lora_targets=tuple(lora_targets.split(",")),
            eval_data=eval_data,
            image_backend=image_backend,
        )
    print(f"trained {result.global_step} steps ({method}), final training loss {result.training_loss:.4f}")
    print(f"model written to {output_dir} (use --model {output_dir})")
