"""Receptive fields: which input pixels a unit can see (used to crop projections, Sec. 2.1 / Fig. 4).

For every layer, ``RF(size, stride, offset)``: unit ``i`` (along one axis) of that layer's output
sees the input pixels ``[offset + i * stride, offset + i * stride + size)`` (half-open; ``offset``
is negative where the padding reaches outside the image). The numbers come from the modules
themselves (kernel, stride, padding, dilation of each ``Conv2d``/``MaxPool2d``/``AvgPool2d``);
``ceil_mode`` pools do not change them (their extra window only reaches past the image, which
:func:`unit_box` clips away). Element-wise modules (ReLU, LRN, BatchNorm, dropout ...) keep the
RF of their input. After a flatten, a global pool or a linear layer every unit sees the whole
image: ``RF(size=input side, stride=0, offset=0)``.

Which models:

* :class:`~convlens.model.ConvNet`: walked stage by stage; names are stage names (``conv1``,
  ``pool1``, ``relu5`` ...), and ``conv5`` and ``relu5`` have the same RF.
* Any other ``nn.Module`` (torchvision alexnet, vgg, resnet, mobilenet_v2 ...): traced with
  ``torch.fx``, names are dotted module names (``features.10``). Branches are exact: where paths
  join (``add``, ``cat``) the RF is the *union* of the joining paths' boxes, which for resnet /
  mobilenet residuals is the longer (main) path. An operation this module does not know makes
  every later RF the whole image (a conservative bound) and logs a warning. If fx cannot trace the
  model, the leaf modules are walked in registration order as a chain, which is exact only for
  sequential feature extractors; a warning says so.
* Kernels, strides and paddings must be square (the same along height and width).
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RF", "receptive_fields", "unit_box"]

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
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish, nn.Softplus, nn.Identity,
    nn.BatchNorm2d, nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Dropout, nn.Dropout2d, nn.GroupNorm,
)
_GLOBAL = (nn.Linear, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POINTWISE_FN = {
    operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul, torch.cat,
    torch.relu, F.relu, F.relu6, F.hardtanh, F.dropout, torch.sigmoid, F.hardswish, F.silu,
    torch.clamp, operator.getitem,
}
_POINTWISE_METHODS = {"relu", "relu_", "add", "add_", "mul", "mul_", "clamp", "contiguous", "sigmoid"}
_GLOBAL_FN = {torch.flatten, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.linear, torch.mean}
_GLOBAL_METHODS = {"flatten", "view", "reshape", "mean", "size"}


def _square(v: object, what: str, name: str) -> int:
    if isinstance(v, str):
        raise ValueError(f"{name}: string padding {v!r} is not supported for receptive fields; use integers")
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(set(vals)) != 1:
        raise ValueError(f"{name}: receptive fields need square {what}, got {vals}")
    return int(vals[0])


def _window(m: nn.Module, name: str) -> tuple[int, int, int] | None:
    """(effective kernel, stride, padding) of a windowed module, or None if it is not one."""
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
        k, s = _square(m.kernel_size, "kernels", name), _square(m.stride, "strides", name)
        p, d = _square(m.padding, "padding", name), _square(m.dilation, "dilation", name)
        return d * (k - 1) + 1, s, p
    if isinstance(m, nn.AvgPool2d):
        return _square(m.kernel_size, "kernels", name), _square(m.stride, "strides", name), _square(
            m.padding, "padding", name
        )
    return None


def _compose(rf: RF, window: tuple[int, int, int]) -> RF:
    k, s, p = window
    return RF(rf.size + (k - 1) * rf.stride, rf.stride * s, rf.offset - p * rf.stride)


def _union(rfs: list[RF], whole: RF) -> RF:
    if any(r == whole for r in rfs) or len({r.stride for r in rfs}) != 1:
        return whole
    start = min(r.offset for r in rfs)
    end = max(r.offset + r.size for r in rfs)
    return RF(end - start, rfs[0].stride, start)


def _module_rf(m: nn.Module, name: str, rf: RF, whole: RF) -> RF:
    window = _window(m, name)
    if window is not None:
        return whole if rf == whole else _compose(rf, window)
    if isinstance(m, _GLOBAL):
        return whole
    if not isinstance(m, _POINTWISE):
        log.warning("receptive field: unknown module %s (%s); treating later layers as seeing the whole image",
                    name, type(m).__name__)
        return whole
    return rf


def _convnet_rfs(model: nn.Module, whole: RF) -> dict[str, RF]:
    rf, out = RF(1, 1, 0), {}
    for name, m in model.stages():  # type: ignore[operator]
        rf = _module_rf(m, name, rf, whole)
        out[name] = rf
    for layer in model.layer_names:  # type: ignore[attr-defined,union-attr]
        if layer != "fc8":
            out.setdefault(layer, out[model.resolve(layer)])  # type: ignore[operator]
    return out


def _fx_rfs(model: nn.Module, whole: RF) -> dict[str, RF]:
    import torch.fx as fx

    gm = fx.symbolic_trace(model)
    node_rf: dict[fx.Node, RF] = {}
    out: dict[str, RF] = {}
    for node in gm.graph.nodes:
        inputs = [node_rf[a] for a in node.all_input_nodes if a in node_rf]
        if node.op == "placeholder":
            node_rf[node] = RF(1, 1, 0)
            continue
        if node.op == "output" or not inputs:
            continue
        if node.op == "call_module":
            rf = _module_rf(gm.get_submodule(node.target), node.target, inputs[0], whole)
            # a module called more than once (resnet's shared relu): the union of its calls
            out[node.target] = _union([out[node.target], rf], whole) if node.target in out else rf
        elif (node.op == "call_function" and node.target in _GLOBAL_FN) or (
            node.op == "call_method" and node.target in _GLOBAL_METHODS
        ):
            rf = whole
        elif node.target in _POINTWISE_FN or (node.op == "call_method" and node.target in _POINTWISE_METHODS):
            rf = _union(inputs, whole)
        else:
            log.warning("receptive field: unknown operation %s; treating later layers as seeing the whole image",
                        node.target)
            rf = whole
        node_rf[node] = rf
    return out


def _chain_rfs(model: nn.Module, whole: RF) -> dict[str, RF]:
    log.warning("receptive field: %s could not be traced with torch.fx; walking its modules as a chain "
                "(exact only for sequential feature extractors)", type(model).__name__)
    rf, out = RF(1, 1, 0), {}
    for name, m in model.named_modules():
        if name and not list(m.children()):
            rf = _module_rf(m, name, rf, whole)
            out[name] = rf
    return out


def receptive_fields(model: nn.Module, input_size: int | tuple[int, int]) -> dict[str, RF]:
    """Receptive field of every layer of ``model``.

    Args:
        model: a :class:`~convlens.model.ConvNet` or any ``nn.Module`` CNN (see the module docstring).
        input_size: input side in pixels (int) or (H, W); only used for the whole-image RF of
            fc layers (``RF(max(H, W), 0, 0)``).

    Returns:
        dict layer name -> :class:`RF`. For a ConvNet both stage names and ``conv5``/``fc6``.

    Raises:
        ValueError: non-square kernels, strides or paddings.

    Example:
        >>> rfs = receptive_fields(build_model("zfnet"), 224)
        >>> rfs["conv1"], rfs["conv5"]
        (RF(size=7, stride=2, offset=-1), RF(size=...))
    """
    side = max(input_size) if isinstance(input_size, (tuple, list)) else int(input_size)
    whole = RF(side, 0, 0)
    if hasattr(model, "stages") and hasattr(model, "resolve"):
        return _convnet_rfs(model, whole)
    try:
        return _fx_rfs(model, whole)
    except Exception as exc:
        log.debug("fx tracing failed: %s", exc)
        return _chain_rfs(model, whole)


def unit_box(
    model: nn.Module, layer: str, y: int, x: int, input_size: int | tuple[int, int]
) -> tuple[int, int, int, int]:
    """Input-pixel box ``(y0, x0, y1, x1)`` (half-open, clipped to the image) seen by a unit.

    Args:
        model: see :func:`receptive_fields`.
        layer: layer name (``conv5``, ``pool2``, ``features.10``); fc layers give the whole image.
        y, x: the unit's position in that layer's output (0 for fc layers).
        input_size: input side (int) or (H, W).

    Example:
        >>> unit_box(build_model("zfnet"), "conv5", 6, 6, 224)
    """
    H, W = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    rfs = receptive_fields(model, (H, W))
    if layer not in rfs:
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(rfs)}")
    rf = rfs[layer]
    if rf.stride == 0:
        return 0, 0, H, W
    y0, y1 = rf.box(y)
    x0, x1 = rf.box(x)
    return max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
