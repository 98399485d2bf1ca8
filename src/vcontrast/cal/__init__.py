"""CAL: Contrastive ALignment (arXiv 2405.17871): visually weighted token loss for VLM training.

`import vcontrast.cal` imports neither `transformers.Trainer` nor trl: `CALTrainer` and `CALSFTTrainer` (which needs
trl) are resolved on first access.
"""

from vcontrast.cal.config import CALConfig, parse_contrast
from vcontrast.cal.data import ConversationCollator, read_conversations, to_messages
from vcontrast.cal.finetune import finetune
from vcontrast.cal.loss import (
    CALOutput,
    ContrastCollator,
    add_contrast_pixels,
    cal_deltas,
    cal_label_mask,
    cal_loss,
    cal_weights,
    clamp_weights,
    eval_mode,
    pool_weights,
    token_weights,
    weighted_loss,
)
from vcontrast.cal.precompute import (
    PrecomputedWeightsCollator,
    audit,
    load_weights,
    precompute_weights,
    summarize_audit,
)
from vcontrast.cal.show import TokenWeight, token_report

_LAZY = {
    "CALTrainer": "vcontrast.cal.trainer",
    "CALTrainerMixin": "vcontrast.cal.trainer",
    "CALSFTTrainer": "vcontrast.cal.sft",
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


def __getattr__(name: str):
    # The trainers import transformers.Trainer (accelerate) and trl: only on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
