"""Benchmarks: loaders that read each benchmark's official files into `Item`s, metrics, and the eval runner."""

from vcontrast.bench.items import Item, read_items, write_items

__all__ = ["Item", "read_items", "write_items"]
