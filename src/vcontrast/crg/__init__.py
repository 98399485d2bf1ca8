"""CRG: Contrastive Region Guidance (arXiv 2403.02325) for transformers VLMs, at inference time."""

from vcontrast.crg.crg import CRG, CRGInputs
from vcontrast.crg.decode import two_stream_generate
from vcontrast.crg.guidance import guided_logprobs
from vcontrast.crg.processor import CRGLogitsProcessor
from vcontrast.crg.scoring import ScoreJob, score_jobs

__all__ = [
    "CRG",
    "CRGInputs",
    "CRGLogitsProcessor",
    "ScoreJob",
    "guided_logprobs",
    "score_jobs",
    "two_stream_generate",
]
