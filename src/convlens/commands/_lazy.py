"""``torch = lazy_module("torch")``: a module imported on first attribute access.

Command modules are imported to build the parser (``convlens --help``); importing torch there costs
seconds. A command module that uses torch in many places binds this proxy at module level (with
the real import under ``TYPE_CHECKING`` for the type checker) instead of importing it in each function.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["lazy_module"]


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


def lazy_module(name: str) -> Any:
    """A stand-in for ``import name`` that imports on first use."""
    return _LazyModule(name)
