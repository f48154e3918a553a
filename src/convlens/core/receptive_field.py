"""Receptive fields: which input pixels a unit can see (used to crop projections, Sec. 2.1 / Fig. 4).

For every layer, ``RF(size, stride, offset)``: unit ``i`` (along one axis) of that layer's output
sees the input pixels ``[offset + i * stride, offset + i * stride + size)`` (half-open; ``offset``
is negative where the padding reaches outside the image). The numbers come from the modules
themselves (kernel, stride, padding, dilation of each ``Conv2d``/``MaxPool2d``/``AvgPool2d``, and
of ``F.conv2d``/``F.max_pool2d``/``F.avg_pool2d``/``F.pad`` calls with constant arguments);
``ceil_mode`` pools do not change them (their extra window only reaches past the image, which
:func:`unit_box` clips away). Element-wise operations (activations, BatchNorm, LRN, dropout,
adds, channel concatenations, ``Linear`` layers applied per position on a channels-last map as in
ConvNeXt ...) keep the RF of their inputs. After a flatten, a reshape, a global pool or a spatial
mean every unit sees the whole image: ``RF(size=input side, stride=0, offset=0)`` (so does
everything after a squeeze-and-excitation gate, whose scale depends on every pixel; this is the
exact answer, not a limitation: such a unit's value changes with any pixel).

Which layers: every module path, leaves and blocks alike (``features.3``, ``layer2.1``,
``layer2.1.conv1``); a block's RF is that of its output.

* :class:`~convlens.nets.convnet.ConvNet`: walked stage by stage; names are stage names (``conv1``,
  ``pool1``, ``relu5`` ...), and ``conv5`` and ``relu5`` have the same RF.
* Any other ``nn.Module`` (torchvision alexnet, vgg, resnet, mobilenet_v2, timm models ...):
  traced with ``torch.fx``. Where paths join (``add``, ``cat``) the RF is the *union* of the
  joining paths' boxes, which for resnet / mobilenet residuals is the longer (main) path; the
  result is exact (it is the box of all input pixels on which the unit depends through any
  path). An operation this module does not know makes every later RF the whole image (a
  conservative bound) and logs a warning. If fx cannot trace the model, the leaf modules are
  walked in registration order as a chain (a block gets the RF of its last leaf), which is exact
  only for sequential feature extractors; a warning says so.
* Non-square kernels, strides or paddings (inception's 1x7 convolutions) are followed along each
  axis: :func:`axis_receptive_fields` gives both, :func:`unit_box` is exact for them, and
  :func:`receptive_fields` leaves out the layers whose two axes differ.
"""
from __future__ import annotations

import logging
import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RF", "axis_receptive_fields", "receptive_fields", "unit_box"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RF:
    """Receptive field of a layer: unit i sees input pixels [offset + i*stride, ... + size)."""

    size: int
    stride: int
    offset: int

    def box(self, i: int) -> tuple[int, int]:
        """Unclipped half-open input interval of unit ``i`` (along one axis)."""
        start = self.offset + i * self.stride
        return start, start + self.size


_POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish, nn.Softplus, nn.Identity, nn.Hardtanh,
    nn.BatchNorm2d, nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Dropout, nn.Dropout2d, nn.GroupNorm,
    nn.InstanceNorm2d, nn.LayerNorm, nn.ChannelShuffle,
    nn.Linear,  # per position on a channels-last map (convnext); after a flatten its input already sees everything
)
_GLOBAL = (nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POINTWISE_FN: set[Any] = {
    operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub, operator.truediv,
    operator.itruediv, operator.neg, operator.pow, torch.add, torch.mul, torch.sub, torch.div, torch.cat,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.where, torch.maximum, torch.minimum,
    F.relu, F.relu6, F.hardtanh, F.dropout, F.dropout2d, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.sigmoid,
    F.leaky_relu, F.elu, F.mish, F.softplus, F.batch_norm, F.group_norm, F.instance_norm, F.layer_norm,
    F.local_response_norm, torch.permute, torch.transpose, F.linear,
}
_POINTWISE_METHODS = {
    "relu", "relu_", "add", "add_", "mul", "mul_", "sub", "div", "clamp", "clamp_", "contiguous", "sigmoid",
    "sigmoid_", "tanh", "permute", "transpose", "to", "type", "float", "double", "half", "clone", "neg",
    "pow", "sqrt", "exp", "abs", "detach",
}
_GLOBAL_FN: set[Any] = {torch.flatten, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.mean}
_GLOBAL_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "expand_as"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var"}  # global unless over channels only
# operations on shapes and flags: they carry no pixels
_META_FN: set[Any] = {getattr, len, operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
                      torch._assert, operator.floordiv, operator.mod}
_META_METHODS = {"size", "dim", "numel"}
_WINDOW_FN: set[Any] = {F.conv2d, F.max_pool2d, F.avg_pool2d}
# per-sample scalings (stochastic depth / drop path, torchvision and timm): element-wise
_POINTWISE_NAMES = {"stochastic_depth", "drop_path"}


def _along(v: object, axis: int) -> int:
    """A kernel/stride/padding value along ``axis`` (0: height, 1: width)."""
    value: Any = v[axis] if isinstance(v, (tuple, list)) else v
    return int(value)


def _padding(pad: object, k_eff: int, name: str, axis: int) -> int:
    """Padding before the first pixel; ``"same"`` pads ``(k-1)//2`` there (torch puts the odd one after)."""
    if pad == "valid":
        return 0
    if pad == "same":
        return (k_eff - 1) // 2
    if isinstance(pad, str):
        raise ValueError(f"{name}: padding {pad!r} is not supported for receptive fields; use integers")
    return _along(pad, axis)


def _window(m: nn.Module, name: str, axis: int) -> tuple[int, int, int] | None:
    """(effective kernel, stride, padding) along ``axis`` of a windowed module, or None if it is not one."""
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
        k, s, d = _along(m.kernel_size, axis), _along(m.stride, axis), _along(m.dilation, axis)
        k_eff = d * (k - 1) + 1
        return k_eff, s, _padding(m.padding, k_eff, name, axis)
    if isinstance(m, nn.AvgPool2d):
        return _along(m.kernel_size, axis), _along(m.stride, axis), _along(m.padding, axis)
    return None


def _compose(rf: RF, window: tuple[int, int, int]) -> RF:
    k, s, p = window
    return RF(rf.size + (k - 1) * rf.stride, rf.stride * s, rf.offset - p * rf.stride)


def _union(rfs: Sequence[RF | None], whole: RF) -> RF | None:
    """The smallest RF holding every box of ``rfs`` (None: no pixel dependency); whole-image if the
    strides differ (their union is not one box per unit with a common stride)."""
    real = [r for r in rfs if r is not None]
    if not real:
        return None
    if any(r == whole for r in real) or len({r.stride for r in real}) != 1:
        return whole
    start = min(r.offset for r in real)
    end = max(r.offset + r.size for r in real)
    return RF(end - start, real[0].stride, start)


def _module_rf(m: nn.Module, name: str, rf: RF, whole: RF, axis: int) -> RF:
    window = _window(m, name, axis)
    if window is not None:
        return whole if rf == whole else _compose(rf, window)
    if isinstance(m, _GLOBAL):
        return whole
    if not isinstance(m, _POINTWISE):
        if axis:  # warned once, for the height axis
            return whole
        log.warning("receptive field: unknown module %s (%s); treating later layers as seeing the whole image",
                    name, type(m).__name__)
        return whole
    return rf


def _convnet_rfs(model: nn.Module, whole: RF, axis: int) -> dict[str, RF]:
    rf, out = RF(1, 1, 0), {}
    for name, m in model.stages():  # type: ignore[operator]
        rf = _module_rf(m, name, rf, whole, axis)
        out[name] = rf
    for layer in model.layer_names:  # type: ignore[attr-defined,union-attr]
        if layer != "fc8":
            out.setdefault(layer, out[model.resolve(layer)])  # type: ignore[operator]
    return out


# ---------------------------------------------------------------------------------------------
# torch.fx: every module call (leaf or block) is recorded with the graph node of its output


def _arg(node: Any, i: int, key: str, default: object) -> object:
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


def _const(v: object) -> bool:
    return isinstance(v, (int, tuple, list, str))


def _function_window(node: Any, root: nn.Module, axis: int) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of an ``F.conv2d`` / ``F.max_pool2d`` / ``F.avg_pool2d`` call with
    constant arguments, else None."""
    name = str(node.name)
    if node.target is F.conv2d:
        w: Any = _arg(node, 1, "weight", None)
        if getattr(w, "op", None) != "get_attr":
            return None
        try:
            weight = root.get_parameter(str(w.target))
        except AttributeError:
            return None
        stride, pad, dil = _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0), _arg(node, 5, "dilation", 1)
        if not all(map(_const, (stride, pad, dil))):
            return None
        k_eff = _along(dil, axis) * (_along(tuple(weight.shape[-2:]), axis) - 1) + 1
        return k_eff, _along(stride, axis), _padding(pad, k_eff, name, axis)
    k, stride, pad = _arg(node, 1, "kernel_size", None), _arg(node, 2, "stride", None), _arg(node, 3, "padding", 0)
    dil = _arg(node, 4, "dilation", 1) if node.target is F.max_pool2d else 1
    if stride is None or stride == []:
        stride = k
    if not all(map(_const, (k, stride, pad, dil))):
        return None
    k_eff = _along(dil, axis) * (_along(k, axis) - 1) + 1
    return k_eff, _along(stride, axis), _along(pad, axis)


def _spatial_slice(index: object) -> bool:
    """Whether a ``tensor[index]`` crops or strides the spatial axes (dims 2 and 3)."""
    if not isinstance(index, tuple):
        return False
    return any(isinstance(ix, slice) and (ix.start not in (None, 0) or ix.step not in (None, 1))
               for ix in index[2:]) or any(ix is Ellipsis for ix in index)


def _reduces_space(node: Any) -> bool:
    dims = _arg(node, 1, "dim", None)
    if dims is None:
        return True
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    return not all(isinstance(d, int) and d in (1, -3) for d in dims)


def _elementwise(node: Any) -> bool:
    """Whether a call_function / call_method node keeps each pixel's position (an element-wise or
    per-position operation, a channel split, or a tuple built for the output)."""
    target, is_method = node.target, node.op == "call_method"
    if is_method:
        split = target in ("chunk", "split")
        return target in _POINTWISE_METHODS or (split and _arg(node, 2, "dim", 0) in (1, -3))
    if target in (torch.chunk, torch.split):  # channel groups (shufflenet)
        return _arg(node, 2, "dim", 0) in (1, -3)
    return target in _POINTWISE_FN or getattr(target, "__name__", None) in _POINTWISE_NAMES or (
        isinstance(target, type) and issubclass(target, tuple))  # namedtuple outputs (GoogLeNetOutputs)


def _function_rf(node: Any, inputs: list[RF | None], whole: RF, root: nn.Module, unknown: set[str],
                 axis: int) -> RF | None:
    target, is_method = node.target, node.op == "call_method"
    if (not is_method and target in _META_FN) or (is_method and target in _META_METHODS):
        return None
    first = inputs[0] if inputs else None
    if all(r is None for r in inputs):
        return None
    if (not is_method and target in _GLOBAL_FN) or (is_method and target in _GLOBAL_METHODS):
        return whole
    if is_method and target in _REDUCE_METHODS:
        return whole if _reduces_space(node) else first
    if not is_method and target in _WINDOW_FN:
        window = _function_window(node, root, axis)
        if window is not None and first is not None:
            return whole if first == whole else _compose(first, window)
    elif not is_method and target is F.pad:
        pads = _arg(node, 1, "pad", None)
        if isinstance(pads, (tuple, list)) and len(pads) in (2, 4) and all(isinstance(p, int) for p in pads) and first:
            before = pads[0] if axis == 1 else (pads[2] if len(pads) == 4 else 0)  # (left, right, top, bottom)
            return first if first == whole else RF(first.size, first.stride, first.offset - before * first.stride)
    elif not is_method and target is operator.getitem:
        if not _spatial_slice(node.args[1]):
            return _union(inputs, whole)
    elif _elementwise(node):
        return _union(inputs, whole)
    unknown.add(getattr(target, "__name__", str(target)))
    return whole


def _trace(model: nn.Module) -> tuple[Any, dict[str, list[object]]]:
    """fx graph of ``model`` and, per module path (leaf or block), the values its calls returned."""
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def __init__(self) -> None:
            super().__init__()
            self.outputs: dict[str, list[object]] = {}

        def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
            out = super().call_module(m, forward, args, kwargs)
            try:
                path = self.path_of_module(m)
            except NameError:
                return out
            self.outputs.setdefault(path, []).append(out)
            return out

    tracer = _Tracer()
    graph = tracer.trace(model)
    return graph, tracer.outputs


def _walk(model: nn.Module, graph: Any, outputs: dict[str, list[object]], whole: RF, axis: int) -> dict[str, RF]:
    import torch.fx as fx

    node_rf: dict[fx.Node, RF | None] = {}
    unknown: set[str] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            node_rf[node] = RF(1, 1, 0) if not node_rf else None
            continue
        if node.op in ("output", "get_attr"):
            node_rf[node] = None
            continue
        inputs = [node_rf.get(a) for a in node.all_input_nodes]
        if node.op == "call_module":
            first = inputs[0] if inputs else None
            node_rf[node] = None if first is None else _module_rf(
                model.get_submodule(node.target), str(node.target), first, whole, axis)
        else:
            node_rf[node] = _function_rf(node, inputs, whole, model, unknown, axis)
    if unknown and axis == 0:
        log.warning("receptive field: unknown operations %s in %s; treating later layers as seeing the whole image",
                    ", ".join(sorted(unknown)), type(model).__name__)
    out: dict[str, RF] = {}
    for path, results in outputs.items():
        # a module called more than once (resnet's shared relu): the union of its calls
        rfs = [node_rf.get(r.node) for r in results if isinstance(r, fx.Proxy)]
        if path and len(rfs) == len(results):
            rf = _union(rfs, whole)
            if rf is not None:
                out[path] = rf
    return out


def _chain_rfs(model: nn.Module, whole: RF, axis: int) -> dict[str, RF]:
    if axis == 0:
        log.warning("receptive field: %s could not be traced with torch.fx; walking its modules as a chain "
                    "(exact only for sequential feature extractors)", type(model).__name__)
    rf, out = RF(1, 1, 0), {}
    for name, m in model.named_modules():
        if name and not list(m.children()):
            rf = _module_rf(m, name, rf, whole, axis)
            out[name] = rf
    for name, m in model.named_modules():  # a block: its last leaf
        if name and name not in out:
            leaves = [f"{name}.{n}" for n, c in m.named_modules() if n and not list(c.children())]
            if leaves:
                out[name] = out[leaves[-1]]
    return out


def _fingerprint(model: nn.Module) -> tuple[object, ...]:
    """What the RFs depend on: module names, types and window parameters."""
    return tuple((n, type(m).__name__, getattr(m, "kernel_size", None), getattr(m, "stride", None),
                  getattr(m, "padding", None), getattr(m, "dilation", None)) for n, m in model.named_modules())


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[object, ...], int, tuple[dict[str, RF], dict[str, RF]]]] = (
    weakref.WeakKeyDictionary())


def axis_receptive_fields(model: nn.Module, input_size: int | tuple[int, int]) -> dict[str, tuple[RF, RF]]:
    """Receptive field of every layer along the height and the width: ``{name: (rf_h, rf_w)}``.

    The two differ only where kernels, strides or paddings are not square (inception's 1x7 / 7x1
    convolutions); :func:`unit_box` uses both. Arguments and errors as :func:`receptive_fields`.
    """
    side = max(input_size) if isinstance(input_size, (tuple, list)) else int(input_size)
    fingerprint = _fingerprint(model)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == fingerprint and cached[1] == side:
        rfs_h, rfs_w = cached[2]
    else:
        whole = RF(side, 0, 0)
        if hasattr(model, "stages") and hasattr(model, "resolve"):
            rfs_h, rfs_w = _convnet_rfs(model, whole, 0), _convnet_rfs(model, whole, 1)
        else:
            try:
                graph, outputs = _trace(model)
            except Exception as exc:  # fx cannot trace every model (data-dependent control flow ...)
                log.debug("fx tracing failed: %s", exc)
                rfs_h, rfs_w = _chain_rfs(model, whole, 0), _chain_rfs(model, whole, 1)
            else:
                rfs_h, rfs_w = _walk(model, graph, outputs, whole, 0), _walk(model, graph, outputs, whole, 1)
        _CACHE[model] = (fingerprint, side, (rfs_h, rfs_w))
    return {name: (rf, rfs_w[name]) for name, rf in rfs_h.items() if name in rfs_w}


def receptive_fields(model: nn.Module, input_size: int | tuple[int, int]) -> dict[str, RF]:
    """Receptive field of every layer of ``model`` (leaf modules and blocks).

    Args:
        model: a :class:`~convlens.nets.convnet.ConvNet` or any ``nn.Module`` CNN (see the module docstring).
        input_size: input side in pixels (int) or (H, W); only used for the whole-image RF of
            fc layers (``RF(max(H, W), 0, 0)``).

    Returns:
        dict layer name -> :class:`RF`. For a ConvNet both stage names and ``conv5``/``fc6``.
        Modules whose output is not a tensor (or that the forward never calls) are absent, and so
        are layers whose receptive field is not square (see :func:`axis_receptive_fields`).

    Example:
        >>> rfs = receptive_fields(torchvision.models.resnet18(), 224)
        >>> rfs["layer2.1"], rfs["layer2.1.conv1"]
        (RF(size=99, stride=8, offset=-49), RF(size=83, stride=8, offset=-41))
    """
    return {name: h for name, (h, w) in axis_receptive_fields(model, input_size).items() if h == w}


def unit_box(
    model: nn.Module, layer: str, y: int, x: int, input_size: int | tuple[int, int]
) -> tuple[int, int, int, int]:
    """Input-pixel box ``(y0, x0, y1, x1)`` (half-open, clipped to the image) seen by a unit.

    Args:
        model: see :func:`receptive_fields`.
        layer: any module path, leaf or block (``features.3``, ``layer2.1``, ``layer2.1.conv1``),
            or a ConvNet layer name (``conv5``); fc layers give the whole image.
        y, x: the unit's position in that layer's output (0 for fc layers).
        input_size: input side (int) or (H, W).

    Raises:
        ValueError: unknown layer (the closest few names are given), or a module with no tensor output.

    Example:
        >>> unit_box(torchvision.models.mobilenet_v2(), "features.3", 10, 12, 224)
    """
    from convlens.core.capture import resolve_layer

    H, W = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    rfs = axis_receptive_fields(model, (H, W))
    if layer not in rfs:
        name = resolve_layer(model, layer)  # raises the closest-names error for an unknown layer
        if name not in rfs:
            raise ValueError(f"layer {layer!r} has no receptive field: its output is not a tensor, or the forward "
                             "pass never calls it; pick one of its submodules")
        layer = name
    rf_h, rf_w = rfs[layer]
    if rf_h.stride == 0 or rf_w.stride == 0:
        return 0, 0, H, W
    y0, y1 = rf_h.box(y)
    x0, x1 = rf_w.box(x)
    return max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
