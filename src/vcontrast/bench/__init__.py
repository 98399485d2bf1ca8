"""Benchmarks: loaders that read each benchmark's official files into `Item`s, metrics, and the eval runner."""

from vcontrast.bench.items import Item, read_items, write_items
from vcontrast.bench.methods import BaseMethod, CRGMethod, Method, get_method
from vcontrast.bench.runner import evaluate, format_table, merge_predictions, read_predictions

__all__ = [
    "BaseMethod",
    "CRGMethod",
    "Item",
    "Method",
    "evaluate",
    "format_table",
    "get_method",
    "merge_predictions",
    "read_items",
    "read_predictions",
    "write_items",
]
