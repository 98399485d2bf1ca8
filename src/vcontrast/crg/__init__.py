"""CRG: Contrastive Region Guidance (arXiv 2403.02325) for transformers VLMs, at inference time.

Exports resolve on first use, so that `vcontrast.crg.cli` (imported by the `vcontrast` command line) does not pull
in torch and transformers before a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vcontrast._lazy import lazy_exports

if TYPE_CHECKING:
    from vcontrast.crg.crg import CRG, CRGInputs
    from vcontrast.crg.decode import two_stream_generate
    from vcontrast.crg.guidance import guided_logprobs
    from vcontrast.crg.processor import CRGLogitsProcessor
    from vcontrast.crg.scoring import ScoreJob, score_jobs

_EXPORTS = {
    "CRG": "vcontrast.crg.crg",
    "CRGInputs": "vcontrast.crg.crg",
    "CRGLogitsProcessor": "vcontrast.crg.processor",
    "ScoreJob": "vcontrast.crg.scoring",
    "guided_logprobs": "vcontrast.crg.guidance",
    "score_jobs": "vcontrast.crg.scoring",
    "two_stream_generate": "vcontrast.crg.decode",
}

__all__ = [
    "CRG",
    "CRGInputs",
    "CRGLogitsProcessor",
    "ScoreJob",
    "guided_logprobs",
    "score_jobs",
    "two_stream_generate",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
