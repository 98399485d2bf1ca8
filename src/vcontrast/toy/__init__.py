"""The toy world: procedural scenes, known-truth tasks and a tiny LLaVA-architecture VLM trained on them."""
