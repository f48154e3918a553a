"""The model as a traced ``torch.fx`` graph, with each node classified as local or global.

One traced graph per model (:func:`traced`, kept while the module tree and modes stay the same)
serves the explicit way down of the deconvnet (:mod:`convlens.deconv.graph_way`), the receptive-
field crops of generic projections (:func:`is_local`) and exact incremental occlusion
(:mod:`convlens.occlusion.incremental`).

A node is *local* when its inputs are all local and its operation is local: convolutions (grouped,
depthwise, dilated; integer zero padding), max pooling, average pooling (padding counted),
BatchNorm (eval), point-wise activations (ReLU, ReLU6, hardswish, SiLU ...), LRN (it mixes
channels only), and element-wise sums/products of same-sized maps (residual additions). The first
global operation (adaptive pooling, flatten, linear, a squeeze-excitation's pooling, any operation
not listed) ends it for everything that depends on it.
"""
from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from convlens.core.padding import has_only_same_pad

__all__ = ["classified", "classify", "is_local", "output_node", "traced"]

_POINT_MODULES = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid,
    nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.LocalResponseNorm,
)
_POINT_FUNCS: set[Any] = {F.relu, torch.relu, F.relu6, F.hardtanh, F.hardswish, F.silu, torch.sigmoid, F.gelu,
                          torch.tanh, F.leaky_relu, torch.clamp, F.dropout}
_POINT_METHODS = {"relu", "sigmoid", "clamp", "contiguous", "tanh"}
_BINARY: set[Any] = {operator.add, torch.add, operator.mul, torch.mul, operator.sub, torch.sub}


def _square(v: Any) -> int | None:
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return int(vals[0]) if len(set(vals)) == 1 and isinstance(vals[0], int) else None


def _window(m: nn.Module) -> tuple[str, int, int, int, int] | None:
    """(kind, effective kernel, stride, padding, dilation) of a supported windowed module, else None."""
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            return None
        k, s, p, d = (_square(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
        return None if None in (k, s, p, d) else ("conv", d * (k - 1) + 1, s, p, d)  # type: ignore[operator,return-value]
    if isinstance(m, nn.MaxPool2d) and not m.return_indices:
        k, s, p, d = (_square(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation))
        return None if None in (k, s, p, d) else ("max", d * (k - 1) + 1, s, p, d)  # type: ignore[operator,return-value]
    if isinstance(m, nn.AvgPool2d) and not m.ceil_mode and m.divisor_override is None \
            and (m.count_include_pad or m.padding in (0, (0, 0))):
        k, s, p = (_square(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding))
        return None if None in (k, s, p) else ("avg", k, s, p, 1)  # type: ignore[return-value]
    return None


def classify(node: fx.Node, kinds: dict[fx.Node, Any], modules: dict[str, nn.Module],
             hooked: Callable[[fx.Node, nn.Module, Any], Any] | None = None) -> Any:
    """Local operation of ``node`` (a tuple) or None when it is global / after a global one.
    A module with hooks is global unless ``hooked`` says otherwise."""
    if node.op == "placeholder":
        return ("input",)
    inputs = node.all_input_nodes
    if not inputs or any(kinds.get(a) is None for a in inputs):
        return None
    if node.op == "call_module":
        m = modules[node.target]  # type: ignore[index]
        if len(node.args) != 1 or node.kwargs:
            return None
        win = _window(m)
        if m._forward_hooks or m._forward_pre_hooks:
            return hooked(node, m, win) if hooked is not None else None
        if win is not None:
            return win
        return ("point",) if isinstance(m, _POINT_MODULES) else None
    unary = len(inputs) == 1 and node.args and node.args[0] is inputs[0]
    if node.op == "call_function" and node.target in _POINT_FUNCS and unary:
        return ("point",)
    if node.op == "call_method" and node.target in _POINT_METHODS and unary:
        return ("point",)
    if node.op == "call_function" and node.target in _BINARY and len(node.args) == 2 and not node.kwargs:
        if len(inputs) == 1:
            return ("point",) if isinstance(node.args[1 - node.args.index(inputs[0])], (int, float)) else None
        return ("binary",)
    return None


def output_node(nodes: list[fx.Node], layer: str) -> fx.Node | None:
    """The node giving ``layer``'s output: the module's (last) call, or the last node inside a container."""
    found = [n for n in nodes if n.op == "call_module" and n.target == layer]
    if not found:
        found = [n for n in nodes if layer in n.meta.get("nn_module_stack", {})]
    return found[-1] if found else None


_TRACES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, fx.GraphModule | Exception]] = \
    weakref.WeakKeyDictionary()


def traced(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``, kept per model while its module tree, modes and class are
    the same (a replaced submodule or a mode change traces again). Its modules are the model's own,
    so weights and hooks are always current. Raises what tracing raised."""
    key = (type(model).forward, tuple((id(m), m.training) for m in model.modules()))
    hit = _TRACES.get(model)
    if hit is None or hit[0] != key:
        try:
            value: fx.GraphModule | Exception = fx.symbolic_trace(model)
        except Exception as exc:
            value = exc
        hit = _TRACES[model] = (key, value)
    if isinstance(hit[1], Exception):
        raise hit[1]
    return hit[1]


def classified(model: nn.Module, hooked: Callable[[fx.Node, nn.Module, Any], Any] | None = None
               ) -> tuple[fx.GraphModule, list[fx.Node], dict[str, nn.Module], dict[fx.Node, Any]] | None:
    """(traced graph, its nodes, its modules, each node's :func:`classify` kind), or None when fx
    cannot trace the model."""
    try:
        gm = traced(model)
    except Exception:
        return None
    nodes, modules = list(gm.graph.nodes), dict(gm.named_modules())
    kinds: dict[fx.Node, Any] = {}
    for node in nodes:
        kinds[node] = classify(node, kinds, modules, hooked)
    return gm, nodes, modules, kinds


def is_local(model: nn.Module, layer: str, *, same_pad: bool = False) -> bool:
    """Whether ``layer``'s output depends on the input only through local operations (then a unit
    depends only on the input inside its receptive field). False when fx cannot trace the model.

    ``same_pad``: also accept 3x3 stride-2 convs whose only hook is convlens's TF "SAME" padding
    (the caller guarantees even input sizes there: then it pads 0 above/left and 1 below/right,
    like the module's own ``padding=0`` plus one row and column that only the last outputs read)."""
    def hooked(_node: fx.Node, m: nn.Module, win: Any) -> Any:
        ok = same_pad and has_only_same_pad(m) and m.kernel_size == (3, 3) and m.stride == (2, 2)  # type: ignore[union-attr]
        return win if ok else None

    graph = classified(model, hooked)
    if graph is None:
        return False
    _, nodes, _, kinds = graph
    node = output_node(nodes, layer)
    return node is not None and kinds[node] is not None


