"""Recording activations of any module, and parsing unit strings ("conv5:42").

``record_activations`` works on any ``nn.Module`` (named submodules, e.g. torchvision's
``features.10``); hooks are removed in ``finally`` whatever happens inside the block.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["get_module", "parse_unit", "record_activations"]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Submodule by dotted name, with a clear error listing what exists."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        choices = ", ".join(n for n in modules if n)
        raise ValueError(f"unknown layer {name!r}; expected one of {choices}")
    return modules[name]


@contextlib.contextmanager
def record_activations(model: nn.Module, layers: list[str] | tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: a dict filled with each named module's output on every forward.

    For a :class:`convlens.model.ConvNet`, layer names are resolved as in ``ConvNet.features``
    (``conv3`` means the rectified output). The dict is keyed by the names given.

    Example:
        >>> with record_activations(model, ["conv5"]) as acts:
        ...     model(images)
        >>> acts["conv5"].shape
    """
    resolve = getattr(model, "resolve", None)
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in layers:
            module = get_module(model, resolve(name) if resolve else name)

            def hook(_m: nn.Module, _i: object, out: torch.Tensor, key: str = name) -> None:
                store[key] = out

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def parse_unit(text: str) -> tuple[str, int]:
    """``"conv5:42"`` -> ``("conv5", 42)``.

    Raises:
        ValueError: when the text is not ``layer:channel`` with an integer channel >= 0.
    """
    layer, sep, channel = text.rpartition(":")
    if not sep or not layer or not channel.isdigit():
        raise ValueError(f"unit must look like 'conv5:42' (layer:channel), got {text!r}")
    return layer, int(channel)
