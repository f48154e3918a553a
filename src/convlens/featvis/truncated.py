"""Running a model only up to one layer, keeping the graph for autograd.

Feature visualization needs the layer's output on every optimization step; the layers after it
would be wasted work. :func:`truncated_forward` returns a function ``x -> activation``:

- when ``torch.fx`` can trace the model (torchvision, timm and most hand-written nets): a
  ``GraphModule`` holding the traced nodes up to the layer's output node (the module's last call,
  or the last node inside a container; :func:`convlens.occlusion.incremental.output_node`). It calls the
  model's own modules, so their weights and hooks (e.g. TF "SAME" padding pre-hooks) are current;
  forward hooks on *containers* are not run (fx inlines them);
- otherwise: :func:`convlens.core.capture.capture` with ``no_grad=False``, whose hook stops the forward
  (an exception) once the layer's output is recorded.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from convlens.core.capture import capture, get_module, resolve_layer
from convlens.core.graph import output_node, traced

__all__ = ["truncated_forward"]


def _fx_truncated(model: nn.Module, path: str) -> fx.GraphModule | None:
    try:
        gm = traced(model)
    except Exception:
        return None
    nodes = list(gm.graph.nodes)
    end = output_node(nodes, path)
    if end is None:
        return None
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
        if node is end:
            break
    graph.output(env[end])
    sub = fx.GraphModule(gm, graph)  # shares gm's (= the model's) submodules
    sub.graph.eliminate_dead_code()
    sub.recompile()
    return sub


def truncated_forward(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> layer's output`` computed without the layers after it; differentiable.

    Args:
        model: any ``nn.Module`` (its mode is used as it is).
        layer: a module path (``features.13``, ``layer2``) or a ConvNet layer name (``conv3``).

    Raises:
        ValueError: unknown layer (the closest names are given).

    Example:
        >>> f = truncated_forward(model, "features.13")
        >>> act = f(x)  # (B, C, H', W'), equal to the full forward's output at features.13
    """
    path = resolve_layer(model, layer)
    get_module(model, path)
    gm = _fx_truncated(model, path)
    if gm is not None:
        return gm

    def hooked(x: torch.Tensor) -> torch.Tensor:
        return capture(model, x, [layer], no_grad=False)[layer]

    return hooked
