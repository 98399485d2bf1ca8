"""CAL: Contrastive ALignment (arXiv 2405.17871): visually weighted token loss for VLM training.

`import vcontrast.cal` does not import trl; `CALSFTTrainer` is resolved on first access and needs it.
"""

from vcontrast.cal.config import CALConfig, parse_contrast
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

__all__ = [
    "CALConfig",
    "CALOutput",
    "ContrastCollator",
    "add_contrast_pixels",
    "cal_deltas",
    "cal_label_mask",
    "cal_loss",
    "cal_weights",
    "clamp_weights",
    "eval_mode",
    "parse_contrast",
    "pool_weights",
    "token_weights",
    "weighted_loss",
]
