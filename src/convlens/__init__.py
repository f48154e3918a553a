"""convlens: Zeiler & Fergus (2013), "Visualizing and Understanding Convolutional Networks", for PyTorch.

The public API is re-exported here lazily, so that ``import convlens.report`` (the static
report, which must not need torch) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # model.py
    "LAYERS": "model", "ConvNet": "model", "ConvNetConfig": "model", "build_model": "model", "get_config": "model",
    # hooks.py
    "record_activations": "hooks", "parse_unit": "hooks",
    # data.py / checkpoint.py
    "Preprocessing": "data", "open_dataset": "data", "load_image": "data",
    "load_model": "checkpoint", "save_checkpoint": "checkpoint",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'convlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
