"""CAL: Contrastive ALignment (arXiv 2405.17871): visually weighted token loss for VLM training.

Exports resolve on first use, so `import vcontrast.cal` (and the `vcontrast` command line) imports neither torch
nor `transformers.Trainer` nor trl until a name is needed.
"""

from __future__ import annotations

from vcontrast._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "CALConfig": "vcontrast.cal.config",
    "CALOutput": "vcontrast.cal.loss",
    "CALSFTTrainer": "vcontrast.cal.sft",
    "CALTrainer": "vcontrast.cal.trainer",
    "CALTrainerMixin": "vcontrast.cal.trainer",
    "ContrastCollator": "vcontrast.cal.loss",
    "ConversationCollator": "vcontrast.cal.data",
    "PrecomputedWeightsCollator": "vcontrast.cal.precompute",
    "TokenWeight": "vcontrast.cal.show",
    "add_contrast_pixels": "vcontrast.cal.loss",
    "audit": "vcontrast.cal.precompute",
    "cal_deltas": "vcontrast.cal.loss",
    "cal_label_mask": "vcontrast.cal.loss",
    "cal_loss": "vcontrast.cal.loss",
    "cal_weights": "vcontrast.cal.loss",
    "clamp_weights": "vcontrast.cal.loss",
    "eval_mode": "vcontrast.cal.loss",
    "finetune": "vcontrast.cal.finetune",
    "load_weights": "vcontrast.cal.precompute",
    "parse_contrast": "vcontrast.cal.config",
    "pool_weights": "vcontrast.cal.loss",
    "precompute_weights": "vcontrast.cal.precompute",
    "read_conversations": "vcontrast.cal.data",
    "summarize_audit": "vcontrast.cal.precompute",
    "to_messages": "vcontrast.cal.data",
    "token_report": "vcontrast.cal.show",
    "token_weights": "vcontrast.cal.loss",
    "weighted_loss": "vcontrast.cal.loss",
}

__all__ = [
    "CALConfig",
    "CALOutput",
    "CALSFTTrainer",
    "CALTrainer",
    "CALTrainerMixin",
    "ContrastCollator",
    "ConversationCollator",
    "PrecomputedWeightsCollator",
    "TokenWeight",
    "add_contrast_pixels",
    "audit",
    "cal_deltas",
    "cal_label_mask",
    "cal_loss",
    "cal_weights",
    "clamp_weights",
    "eval_mode",
    "finetune",
    "load_weights",
    "parse_contrast",
    "pool_weights",
    "precompute_weights",
    "read_conversations",
    "summarize_audit",
    "to_messages",
    "token_report",
    "token_weights",
    "weighted_loss",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
