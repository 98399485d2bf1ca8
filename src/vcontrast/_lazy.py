"""Package exports resolved on first access (PEP 562), so importing a package stays free of torch/transformers."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, str], submodules: tuple[str, ...] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package` whose public names live in the modules `exports` maps them to.

    `submodules` are `package`'s own submodules reachable as attributes (`vcontrast.toy` after `import vcontrast`),
    imported on first access. A resolved name is stored in the package's namespace, so later lookups do not come
    back here (importing a submodule stores it there too).
    """

    def __getattr__(name: str) -> object:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports) | set(submodules))

    return __getattr__, __dir__
