"""CAL: Contrastive ALignment (arXiv 2405.17871): visually weighted token loss for VLM training."""
