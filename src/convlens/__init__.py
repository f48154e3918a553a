"""convlens: Zeiler & Fergus (2013), "Visualizing and Understanding Convolutional Networks", for PyTorch."""
from __future__ import annotations

__version__ = "0.1.0"

from .hooks import parse_unit, record_activations
from .model import LAYERS, ConvNet, ConvNetConfig, build_model, get_config

__all__ = [
    "__version__",
    "LAYERS",
    "ConvNet",
    "ConvNetConfig",
    "build_model",
    "get_config",
    "parse_unit",
    "record_activations",
]
