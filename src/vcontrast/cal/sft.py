"""`CALSFTTrainer`: TRL's `SFTTrainer` (datasets, VLM collator, PEFT, packing off) with CAL's loss. Needs trl."""

from __future__ import annotations

from trl import SFTTrainer

from vcontrast.cal.trainer import CALTrainerMixin

__all__ = ["CALSFTTrainer"]


class CALSFTTrainer(CALTrainerMixin, SFTTrainer):
    """
    TRL's `SFTTrainer` trained with CAL's visually weighted token loss instead of plain NLL.

    Everything TRL prepares is kept (dataset formatting, `DataCollatorForVisionLanguageModeling`, PEFT); only the loss
    changes, as in [`CALTrainer`]: exact step-wide normalisation under gradient accumulation and data parallelism,
    `cal/*` metrics in the logs. TRL's collator labels every token, image placeholders included; CAL leaves out the
    labels on image tokens and right after them (see [`vcontrast.cal.cal_label_mask`]).

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
