"""`CALSFTTrainer`: TRL's `SFTTrainer` (datasets, VLM collator, PEFT, packing off) with CAL's loss. Needs trl."""

from __future__ import annotations

from typing import Any

from trl import SFTTrainer

from vcontrast.cal.trainer import CALTrainerMixin

__all__ = ["CALSFTTrainer"]


def _first_row(dataset: Any) -> dict | None:
    if dataset is None or isinstance(dataset, dict):  # several eval sets: their rows are not looked at here
        return None
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        try:
            row = dataset[0]
        except (IndexError, KeyError, TypeError):
            return None
    elif hasattr(dataset, "__iter__") and iter(dataset) is not dataset:
        # A streaming dataset (`datasets.IterableDataset`, a torch `IterableDataset`): peek at its first row. A
        # one-shot iterator is not peeked at, since training would then miss that row.
        row = next(iter(dataset), None)
    else:
        return None
    return row if isinstance(row, dict) else None


class CALSFTTrainer(CALTrainerMixin, SFTTrainer):
    """
    TRL's `SFTTrainer` trained with CAL's visually weighted token loss instead of plain NLL.

    Everything TRL prepares is kept (dataset formatting, PEFT); only the loss changes, as in [`CALTrainer`]: exact
    step-wide normalisation under gradient accumulation and data parallelism, `cal/*` metrics in the logs.

    Labels: completion only, by default, as LLaVA trains. For a conversational vision dataset (rows with `messages`
    and `images`/`image`) and no `data_collator`, the collator is vcontrast's [`vcontrast.cal.ConversationCollator`]:
    labels on the assistant turns (their text and the template's end-of-turn) only, never on the user's prompt, the
    system turn or the image; any chat template works. (TRL's own default labels every token, and its
    `assistant_only_loss=True` needs a template with generation markers or one TRL knows; with it set, TRL's collator
    is kept.) Prompt-completion datasets get TRL's `completion_only_loss` (its default). To train on every token,
    pass TRL's `DataCollatorForVisionLanguageModeling` yourself. CAL also leaves out labels on image tokens and right
    after them (see [`vcontrast.cal.cal_label_mask`]).

    TRL patches the model with a fused LM head that returns log-probabilities but no logits when called with
    `fused_lm_head=True`. CAL needs the raw gold-token logits with the image, so it calls the model's plain forward
    (`fused_lm_head=False`, TRL's default), which returns the logits; a forward that still returns none (a Liger-style
    kernel) must return `hidden_states`, from which the loss is computed, or [`vcontrast.cal.cal_loss`] raises: CAL
    never falls back to plain NLL. TRL's own `entropy` and `mean_token_accuracy` metrics are not computed.

    Args:
        cal_config (`CALConfig`, *optional*, defaults to `CALConfig()`): CAL's hyperparameters.
        *args, **kwargs: passed to `trl.SFTTrainer`.

    Examples:

    ```python
    >>> from trl import SFTConfig
    >>> args = SFTConfig("out", max_length=None, per_device_train_batch_size=8)
    >>> trainer = CALSFTTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    >>> trainer.train()
    ```
    """

    def __init__(self, *args, **kwargs):
        # SFTTrainer's leading positional parameters, named, so that the default collator sees them either way.
        names = ("model", "args", "data_collator", "train_dataset", "eval_dataset", "processing_class")
        kwargs.update(zip(names, args, strict=False))
        if kwargs.get("data_collator") is None:
            collator = _completion_only_collator(kwargs)
            if collator is not None:
                kwargs["data_collator"] = collator
        super().__init__(*args[len(names) :], **kwargs)


def _completion_only_collator(kwargs: dict) -> Any:
    # vcontrast's assistant-turns-only collator for a conversational vision dataset, unless the user chose TRL's
    # assistant-only masking; None where TRL's default is already completion-only or the data is not such a dataset.
    from vcontrast.cal.data import ConversationCollator

    row = _first_row(kwargs.get("train_dataset"))
    args, processor = kwargs.get("args"), kwargs.get("processing_class")
    if row is None or "messages" not in row or not ("images" in row or "image" in row):
        return None
    if getattr(args, "assistant_only_loss", False) or getattr(processor, "chat_template", None) is None:
        return None
    return ConversationCollator(processor, max_length=getattr(args, "max_length", None))
