"""vcontrast: make vision-language models look at the image.

CRG (contrastive region guidance) at inference time and CAL (contrastive alignment) at training time, for
Hugging Face transformers VLMs. Both compare a model's token logits under two visual conditions; the shared
primitive lives in `vcontrast.contrast`, the per-family knowledge in `vcontrast.models`.

The names below, and the `vcontrast.toy` submodule (`vcontrast.toy.load()`), are resolved on first access (PEP 562),
so `import vcontrast` and `vcontrast --help` do not pay for importing torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vcontrast._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Blackout": "vcontrast.conditions",
    "DiffusionNoise": "vcontrast.conditions",
    "GaussianBlur": "vcontrast.conditions",
    "NoImage": "vcontrast.conditions",
    "PatchMask": "vcontrast.conditions",
    "VisualCondition": "vcontrast.conditions",
    "parse_condition": "vcontrast.conditions",
    "TokenScores": "vcontrast.contrast",
    "gold_token_logits": "vcontrast.contrast",
    "get_adapter": "vcontrast.models",
    "supported_model_types": "vcontrast.models",
    "load_model": "vcontrast.models.loading",
    "blackout": "vcontrast.regions",
    "blackout_all": "vcontrast.regions",
    "blackout_each": "vcontrast.regions",
    "blackout_mask": "vcontrast.regions",
    "combined_box": "vcontrast.regions",
    "draw_boxes": "vcontrast.regions",
    "parse_boxes": "vcontrast.regions",
    "region_mask": "vcontrast.regions",
}

# submodules reachable as attributes after a plain `import vcontrast`
_SUBMODULES = ("toy",)

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

if TYPE_CHECKING:
    from vcontrast import toy as toy  # a submodule, not in __all__
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
