"""Layer choices on a loaded model (:class:`~convlens.nets.loading.Loaded`): the defaults the
commands and the explorer use when no layer is given, name checks, and the one feature-map layer
that occlusion and projection need. The per-model rules live in :mod:`convlens.core.layers`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from convlens.core.capture import get_module, record_activations
from convlens.core.layers import default_layers as model_default_layers

if TYPE_CHECKING:
    from convlens.nets.loading import Loaded

__all__ = ["check_layers", "default_layers", "feature_map_layer"]


def default_layers(loaded: Loaded, count: int | None = None) -> list[str]:
    """:func:`convlens.core.layers.default_layers` of the loaded model at its input size (``conv1`` ...
    ``conv5`` of a ConvNet, else a few evenly spaced spatial blocks); ``count`` keeps the last ``count``."""
    names = list(model_default_layers(loaded.model, loaded.input_size))
    return names[-count:] if count else names


def check_layers(loaded: Loaded, layers: Sequence[str], *, flag: str = "--layers") -> list[str]:
    """``layers`` unchanged when each names a module of the model (aliases such as ``fc6`` resolved).

    Raises:
        ValueError: an unknown name, prefixed with ``flag``, with the closest existing names.
    """
    model = loaded.model
    resolve = getattr(model, "resolve", None)
    for layer in layers:
        try:
            get_module(model, resolve(layer) if resolve else layer)
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    return list(layers)


def feature_map_layer(loaded: Loaded, layer: str | None, flag: str = "--layer") -> str:
    """A layer with a spatial (N, C, H, W) output: ``layer`` checked, or the deepest default layer.

    Raises:
        ValueError: more than one layer, an unknown layer, or one whose output is not a feature map
            (e.g. ``fc7``).
    """
    if layer is not None and "," in layer:
        raise ValueError(f"{flag} takes one layer, got {layer!r}")
    if layer is not None and not layer.strip():
        raise ValueError(f"{flag} is empty; expected a layer name (see 'convlens summary')")
    name = check_layers(loaded, [layer.strip()], flag=flag)[0] if layer is not None else default_layers(loaded)[-1]
    model = loaded.model
    p = next(model.parameters(), None)
    x = torch.zeros(1, 3, loaded.input_size, loaded.input_size, device=p.device if p is not None else "cpu")
    with torch.no_grad(), record_activations(model, [name]) as acts:
        model(x)
    shape = tuple(acts[name].shape) if name in acts and torch.is_tensor(acts[name]) else None
    if shape is None or len(shape) != 4:
        example = default_layers(loaded)[-1]
        raise ValueError(f"{flag} {name}: its output has shape {shape}, expected a feature map (N, C, H, W); "
                         f"give a convolutional layer, e.g. {flag} {example} (see 'convlens summary')")
    return name
