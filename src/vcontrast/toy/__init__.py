"""The toy world: procedural scenes, known-truth tasks and a tiny LLaVA-architecture VLM trained on them."""

from vcontrast.toy.model import load

__all__ = ["load"]
