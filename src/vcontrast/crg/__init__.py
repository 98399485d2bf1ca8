"""CRG: Contrastive Region Guidance (arXiv 2403.02325) for transformers VLMs, at inference time."""
