"""Fine-tune a VLM on LLaVA-style conversation data with CAL or plain cross-entropy, the transformers way.

[`finetune`] is what `vcontrast train` runs: read and validate the data ([`vcontrast.cal.read_conversations`]),
collate it with the processor's chat template (labels on the assistant turns, [`vcontrast.cal.ConversationCollator`]),
and train with [`vcontrast.cal.CALTrainer`] (`method="cal"`) or `transformers.Trainer` (`method="mle"`). Checkpoints
are transformers' own (`output_dir/checkpoint-N`, every `save_steps`), so `resume=True` continues from the last one
with its optimizer, scheduler, RNG and data position. The final model and processor are saved with
`save_pretrained` into `output_dir`, loadable with [`vcontrast.models.load_model`].
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn
from transformers import TrainerCallback

from vcontrast.cal.config import CALConfig
from vcontrast.cal.data import ConversationCollator, read_conversations
from vcontrast.cal.stages import LORA_TARGETS, apply_stage, lora_config, stage_optimizer

if TYPE_CHECKING:
    from transformers import TrainingArguments
    from transformers.trainer_utils import TrainOutput

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "finetune"]

METHODS = ("cal", "mle")


def finetune(
    data: str | Path | Sequence[dict],
    args: TrainingArguments,
    *,
    model: str | Path | nn.Module | None = None,
    processor=None,
    method: str = "cal",
    cal_config: CALConfig | None = None,
    cal_weights: str | Path | None = None,
    image_folder: str | Path | None = None,
    max_length: int | None = None,
    resume: bool = False,
    stage: str = "it",
    tower_lr_ratio: float | None = None,
    lora_r: int = 0,
    lora_targets: Sequence[str] = LORA_TARGETS,
    eval_data: str | Path | Sequence[dict] | None = None,
    image_backend: str | None = None,
) -> TrainOutput:
    """Fine-tune a supported VLM on conversation data with CAL or MLE; save the result with `save_pretrained`.

    Args:
        data (`str`, `Path` or `Sequence[dict]`): a LLaVA-style JSON/JSONL file, or examples as
            [`vcontrast.cal.read_conversations`] returns them.
        args (`TrainingArguments`): output folder, steps or epochs, learning rate, batch size, accumulation,
            `save_steps`, seed, ... (`remove_unused_columns` is turned off: the collator reads raw examples).
        model (`str`, `Path` or `PreTrainedModel`, *optional*): a model folder or hub name (loaded with
            [`vcontrast.models.load_model`]), or a model object (then `processor` is required); defaults to the toy
            model shipped with vcontrast.
        processor (`ProcessorMixin`, *optional*): the model's processor, when `model` is an object.
        method (`str`, *optional*, defaults to `"cal"`): `"cal"` ([`vcontrast.cal.CALTrainer`]) or `"mle"`
            (`transformers.Trainer`, the model's own token-mean cross-entropy).
        cal_config (`CALConfig`, *optional*): CAL's alpha, beta, window, contrast and normalisation (`"cal"` only).
        cal_weights (`str` or `Path`, *optional*): weights precomputed with [`vcontrast.cal.precompute_weights`] on
            the same data (`vcontrast cal precompute`): training then runs no contrast pass (`"cal"` only).
        image_folder (`str` or `Path`, *optional*): where relative image paths resolve; defaults to the data's folder.
        max_length (`int`, *optional*): cut longer sequences (see [`vcontrast.cal.ConversationCollator`]).
        resume (`bool`, *optional*, defaults to `False`): continue from the last `checkpoint-N` in `output_dir`.
            Without it, an `output_dir` that already holds checkpoints is an error (nothing is overwritten by
            accident).
        stage (`str`, *optional*, defaults to `"it"`): `"pt"` trains the projector only, on LLaVA's plain format
            (image, then caption); `"it"` the projector and the language model with the vision tower frozen (or at
            `tower_lr_ratio`); `"all"` everything (see [`vcontrast.cal.stages`]).
        tower_lr_ratio (`float`, *optional*): the vision tower's learning rate as a fraction of `args.learning_rate`
            (0 = frozen, the default for `"pt"` and `"it"`).
        lora_r (`int`, *optional*, defaults to 0): with `r > 0`, LoRA of rank `r` on the language model's
            `lora_targets` layers and the projector trained in full (`"it"` and `"all"`; needs peft); the saved
            model has the adapters merged.
        lora_targets (`Sequence[str]`, *optional*): layer names LoRA adapts (default: every decoder projection).
        eval_data (`str`, `Path` or `Sequence[dict]`, *optional*): an eval set, evaluated every `args.eval_steps`
            when `args.eval_strategy` is `"steps"` (CAL loss for `"cal"`, cross-entropy for `"mle"`).
        image_backend (`str`, *optional*): the image processor's backend, "pil" or "torchvision", for a model
            `finetune` loads ([`vcontrast.models.load_model`]); defaults to transformers' choice.

    Returns:
        `TrainOutput`: transformers' `(global_step, training_loss, metrics)`. `args.output_dir` holds the final model,
        its processor and `trainer_state.json`.

    Examples:

    ```python
    >>> args = TrainingArguments("runs/cal", max_steps=1000, learning_rate=2e-5, per_device_train_batch_size=8)
    >>> finetune("data/train.jsonl", args, model="llava-hf/llava-1.5-7b-hf", method="cal")
    >>> model, processor = load_model("runs/cal")
    ```
    """
    from transformers import Trainer
    from transformers.trainer_utils import TrainOutput, get_last_checkpoint

    from vcontrast.cal.precompute import PrecomputedWeightsCollator, load_weights
    from vcontrast.cal.trainer import CALTrainer
    from vcontrast.models.loading import load_model

    if method not in METHODS:
        raise ValueError(f"`method` (={method!r}) has to be one of {', '.join(METHODS)}")
    if method != "cal" and (cal_weights is not None or cal_config is not None):
        raise ValueError(f"`cal_weights` and `cal_config` only apply to method 'cal', not {method!r}")
    if cal_weights is not None and stage == "pt":
        raise ValueError(
            "`cal_weights` with stage 'pt': precomputed weights come from the chat-template format, stage 'pt' "
            "trains on LLaVA's plain format (other tokens); drop `cal_weights`"
        )
    if lora_r and stage == "pt":
        raise ValueError("stage 'pt' trains the projector only: LoRA (`lora_r` > 0) applies to 'it' and 'all'")
    if lora_r and tower_lr_ratio:
        raise ValueError(f"with LoRA the vision tower stays frozen: `tower_lr_ratio` (={tower_lr_ratio}) has to be 0")
    if cal_weights is not None and eval_data is not None:
        raise ValueError("`eval_data` with `cal_weights`: the eval samples have no precomputed weights; drop one")
    config = CALConfig() if cal_config is None else cal_config
    output_dir = Path(args.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last is not None and not resume:
        raise ValueError(
            f"`output_dir` (={str(output_dir)!r}) already holds {Path(last).name}: resume from it, or choose another "
            "output folder"
        )
    if resume:
        last = last_complete_checkpoint(output_dir)
    if resume and last is None:
        logger.warning("no checkpoint in %s to resume from: training from the start", output_dir)

    examples = read_conversations(data, image_folder) if isinstance(data, (str, Path)) else list(data)
    if not examples:
        raise ValueError("`data` holds no examples")
    if isinstance(model, nn.Module):
        if processor is None:
            raise ValueError("`processor` is required when `model` is a model object")
        if image_backend is not None:
            raise ValueError("`image_backend` applies to a model `finetune` loads; pass the processor wanted instead")
    else:
        model, processor = load_model(model, image_backend=image_backend)
    parts = apply_stage(model, stage, tower_lr_ratio)
    logger.info("stage %s: trainable parameters per part %s", stage, parts)
    optimizer = stage_optimizer(model, args.learning_rate, tower_lr_ratio or 0.0, args.weight_decay)
    if lora_r:
        import peft

        model = peft.get_peft_model(model, lora_config(model, lora_r, tuple(lora_targets)))
    # `gradient_checkpointing*` are deprecated aliases of `activation_checkpointing*` (transformers 5.23+) that only
    # mirror the new ones, so setting an old one after construction would be ignored.
    if args.activation_checkpointing and args.activation_checkpointing_kwargs is None:
        args.activation_checkpointing_kwargs = {"use_reentrant": False}  # works with frozen inputs (PT, LoRA)
    contrast = config.contrast if method == "cal" and config.uses_pixels and cal_weights is None else None
    collator = ConversationCollator(processor, contrast=contrast, max_length=max_length, plain=stage == "pt")
    if cal_weights is not None:
        stored = load_weights(cal_weights, tokenizer=processor)  # the ids must mean the same tokens
        collator = PrecomputedWeightsCollator(collator, stored, model, config)
    args.remove_unused_columns = False
    if eval_data is not None:
        eval_examples = (
            read_conversations(eval_data, image_folder) if isinstance(eval_data, (str, Path)) else eval_data
        )
    common = {
        "model": model,
        "args": args,
        "train_dataset": examples,
        "eval_dataset": None if eval_data is None else list(eval_examples),
        "data_collator": collator,
        "processing_class": processor,
        "optimizers": (optimizer, None),
    }
    trainer = CALTrainer(**common, cal_config=config) if method == "cal" else Trainer(**common)
    trainer.add_callback(_LogAtSaves())
    restored = False
    if resume and last is not None:
        logger.info("resuming from %s", last)
        restored = _restore_weights(model, Path(last))
    with _without_key_warnings(restored):
        result = trainer.train(resume_from_checkpoint=last if resume else None)
    if resume and last is not None:
        result = TrainOutput(result.global_step, _loss_over_all_steps(Path(last), result), result.metrics)
    # Under `accelerate launch` every process gets here: the main one alone writes, once all have finished.
    trainer.accelerator.wait_for_everyone()
    if lora_r:  # a plain model in `output_dir`, loadable with `--model` like any other
        if trainer.is_world_process_zero():
            trainer.model.merge_and_unload().save_pretrained(str(output_dir))
    else:
        trainer.save_model(str(output_dir))  # every process (sharded weights are gathered), the main one writes
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(output_dir))
    trainer.save_state()  # the main process only
    return result


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that was written completely, or None.

    transformers' Trainer writes `trainer_state.json` last, so a checkpoint without it was cut off (the run was
    killed while saving); it is skipped with a one-line notice.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folders = [p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()]
    folders = sorted(
        (p for p in folders if p.name.rsplit("-", 1)[1].isdigit()), key=lambda p: int(p.name.rsplit("-", 1)[1])
    )
    for folder in reversed(folders):
        if (folder / "trainer_state.json").is_file():
            return str(folder)
        logger.warning(
            "skipping %s: incomplete (no trainer_state.json; the run stopped while writing it)", folder.name
        )
    return None


class _LogAtSaves(TrainerCallback):
    # Log the loss at every checkpoint, so that a checkpoint's log history holds the loss of every step before it
    # and a resumed run can report its training loss over all steps.
    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True
        return control


def _loss_over_all_steps(checkpoint: Path, result) -> float:
    # The Trainer's training loss after a resume is the mean over the resumed steps only; add the steps before.
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    total, logged = 0.0, 0
    for entry in state.get("log_history", []):
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - logged)
            logged = entry["step"]
    before = int(state.get("global_step", 0))
    if logged != before or result.global_step <= 0:
        logger.warning(
            "training loss over the %d resumed steps only (%s logs no loss at its step)",
            result.global_step - before,
            checkpoint.name,
        )
        return result.training_loss
    return (total + result.training_loss * (result.global_step - before)) / result.global_step


@contextmanager
def _without_key_warnings(active: bool):
    # After `_restore_weights`, the Trainer's own load reports every parameter name as missing (kilobytes of them);
    # the weights are right, so drop those two messages.
    trainer_logger = logging.getLogger("transformers.trainer")

    def drop(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("There were missing keys", "There were unexpected keys"))

    if active:
        trainer_logger.addFilter(drop)
    try:
        yield
    finally:
        trainer_logger.removeFilter(drop)


def _checkpoint_keys(folder: Path) -> set[str] | None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    single = folder / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return set(f.keys())


def _restore_weights(model: nn.Module, checkpoint: Path) -> bool:
    # transformers' Trainer restores a checkpoint's weights with a plain `load_state_dict(strict=False)`, but
    # `save_pretrained` writes the families with a key conversion mapping (LLaVA, Qwen2-VL, ...) under their original
    # key names, so no key matches and training silently restarts from the initial weights
    # (huggingface/transformers#43701). Load them the way `from_pretrained` does instead; the Trainer's own attempt
    # then changes nothing (it still warns about missing keys).
    # Returns whether it did.
    keys = _checkpoint_keys(checkpoint)
    if keys is None or not keys - set(model.state_dict()):
        return False
    logger.info("loading the weights of %s with from_pretrained (the Trainer cannot map its key names)", checkpoint)
    trained = type(model).from_pretrained(str(checkpoint))
    model.load_state_dict(trained.state_dict())
    return True
