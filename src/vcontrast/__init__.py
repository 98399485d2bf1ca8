"""vcontrast: make vision-language models look at the image.

CRG (contrastive region guidance) at inference time and CAL (contrastive alignment) at training time, for
Hugging Face transformers VLMs. Both compare a model's token logits under two visual conditions; the shared
primitive lives in `vcontrast.contrast`, the per-family knowledge in `vcontrast.models`.
"""

from vcontrast.conditions import (
    Blackout,
    DiffusionNoise,
    GaussianBlur,
    NoImage,
    PatchMask,
    VisualCondition,
    parse_condition,
)
from vcontrast.contrast import TokenScores, gold_token_logits
from vcontrast.models import get_adapter, supported_model_types
from vcontrast.models.loading import load_model
from vcontrast.regions import (
    blackout,
    blackout_all,
    blackout_each,
    blackout_mask,
    combined_box,
    draw_boxes,
    parse_boxes,
    region_mask,
)

__version__ = "0.1.0"

__all__ = [
    "Blackout",
    "DiffusionNoise",
    "GaussianBlur",
    "NoImage",
    "PatchMask",
    "TokenScores",
    "VisualCondition",
    "__version__",
    "blackout",
    "blackout_all",
    "blackout_each",
    "blackout_mask",
    "combined_box",
    "draw_boxes",
    "get_adapter",
    "gold_token_logits",
    "load_model",
    "parse_boxes",
    "parse_condition",
    "region_mask",
    "supported_model_types",
]
