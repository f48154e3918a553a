"""The deconvnet: project chosen activations back to input pixels (Sec. 2.1, Fig. 1).

A projection starts from one unit of a layer: every other activation of that layer is set to
zero, the unit keeps its activation value, and the signal goes down layer by layer:
(i) **unpool** with the switches recorded by max pooling on the way up, (ii) **rectify** with
relu, (iii) **filter** with the transposed (flipped) filters of the same layer, without biases.
fc6/fc7 start points go down through the transposed weight matrices.

Departures and conventions (all tested in ``tests/test_deconv.py``):

* **Overlapping pooling** (3x3, stride 2): an input can be the switch of two windows. Unpooling
  *sums* both contributions (scatter-add), which is exactly what autograd's max-pool backward
  does. ``F.max_unpool2d`` would overwrite instead (PERFORMANCE-NOTES: 0.71 relative difference).
* **Local contrast normalization (LRN) and dropout are passed straight through** on the way down
  with the ``deconvnet`` rule, the paper's choice. Projections always run the net in eval mode
  (dropout off, BatchNorm with its running statistics); the caller's ``training`` flags are restored.
* The projection is **seeded with the unit's activation value** (the paper's "pass the feature
  map"), so for ``rule="gradient"`` it equals ``value * d(unit)/d(input)``.
* Rules: ``deconvnet`` (relu of the signal at every ReLU; the forward pass only supplies the
  switches), ``guided`` (Springenberg et al. 2015: relu of the signal *and* the forward relu's
  gate; LRN uses its true gradient), ``gradient`` (plain backprop, true LRN gradient).

Two implementations, equal to float64 precision:

* **Explicit** (:class:`~convlens.nets.convnet.ConvNet`): one forward records switches (and relu gates for
  guided/gradient), then all N*K units go down in one batched pass (each image's switches shared
  by its K units), and each layer is only computed inside the window that holds the units'
  receptive field (about 4x less work at conv5 of ZFNet; see ``benchmarks/deconv.py``).
* **Generic autograd** (any ``nn.Module``: torchvision alexnet, vgg, resnet, mobilenet_v2 ...):
  forward hooks put a custom autograd function after every ``nn.ReLU``/``nn.ReLU6`` whose
  backward applies the rule; hooks are removed in ``finally``. Behaviour on other modules:

  - ``nn.ReLU6``: treated as a ReLU by the rectifying rules: ``deconvnet`` passes relu(signal),
    ``guided`` gates with ``y > 0``; the upper clip is ignored, otherwise saturated units (value 6,
    often the strongest) would project to nothing. ``gradient`` keeps the true gate ``0 < y < 6``.
    A warning says so.
  - ``BatchNorm`` (eval mode) is a per-channel affine map: its scale passes through (autograd).
  - Residual additions: the signal splits into both branches and the two projections add up
    (autograd of ``+``); concatenations split by channel.
  - Functional relus (``F.relu`` in ``forward``) cannot be hooked: models whose fx trace shows
    them raise ``ValueError`` for ``deconvnet``/``guided`` (a model with no ReLU modules at all
    gets a warning when it cannot be traced). Other activations (GELU, SiLU, Hardswish ...) keep
    their true gradient, with a warning.
  - **Nets without max pooling** (mobilenet_v2, most modern CNNs): the deconvnet rule never reads
    the forward pass except through max-pool switches, so there its projection does not depend on
    the image at all, only on the unit's position (a fixed, often checkerboard pattern; see
    Springenberg et al. 2015, Nie et al. 2018). Use ``guided`` there (``examples/mobilenet_projection.py``).
  - Inplace activations (torchvision's ``ReLU(inplace=True)``) are switched to out-of-place during
    the call and restored in ``finally``.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.core.capture import get_module, hooked
from convlens.core.receptive_field import receptive_fields
from convlens.deconv.rules import RULE_CHOICES, RULES, resolve_rule

__all__ = ["RULES", "RULE_CHOICES", "Projection", "project_max", "project_topk", "project_units", "resolve_rule"]

log = logging.getLogger(__name__)

_LRN = (nn.LocalResponseNorm, nn.CrossMapLRN2d)
_OTHER_ACTIVATIONS = (nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish,
                      nn.Softplus)
Selector = Callable[[torch.Tensor], torch.Tensor]  # activation (N, C, H, W) or (N, F) -> units (N, K, 3)


@dataclass(frozen=True)
class Projection:
    """Projections of N x K units to input space.

    Attributes:
        images: (N, K, 3, H, W) projections (input space; :func:`convlens.deconv.view.present` shows them).
        values: (N, K) activation of each unit (the seed of its projection).
        units: (N, K, 3) long, (channel, y, x) of each unit ((channel, 0, 0) for fc layers).
        boxes: (N, K, 4) long, the unit's receptive field ``(y0, x0, y1, x1)`` clipped to the image.
        layer: the layer name as given.
        rule: ``deconvnet``, ``guided`` or ``gradient``.
    """

    images: torch.Tensor
    values: torch.Tensor
    units: torch.Tensor
    boxes: torch.Tensor
    layer: str
    rule: str

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "rule": self.rule, "images": self.images, "values": self.values,
                "units": self.units, "boxes": self.boxes}


# ---------------------------------------------------------------------------------------------
# Public entry points


def project_units(
    model: nn.Module, images: torch.Tensor, layer: str, units: torch.Tensor, *, rule: str = "deconvnet"
) -> Projection:
    """Project explicit units of ``layer`` to input pixels, N images x K units in one pass.

    Args:
        model: a :class:`~convlens.nets.convnet.ConvNet` (explicit path) or any ``nn.Module`` CNN (generic
            path; ``layer`` is then a dotted module name such as ``features.10``).
        images: (N, 3, H, W) normalized images, on the model's device and dtype.
        layer: ``conv1``..``conv5``, ``fc6``, ``fc7`` (rectified outputs) or any stage / module name.
        units: (N, K, 3) integer (channel, y, x) per image; fc layers use (channel, 0, 0).
            A (K, 3) tensor is used for every image.
        rule: ``deconvnet`` (the paper), ``guided``, ``gradient``, or ``auto``
            (:func:`convlens.deconv.rules.resolve_rule`: deconvnet where max-pool switches make it follow
            the image, guided elsewhere); ``Projection.rule`` names the rule used.

    Returns:
        :class:`Projection` with ``images`` (N, K, 3, H, W).

    Raises:
        ValueError: bad shapes, unknown layer or rule, units out of range.

    Example:
        >>> model = build_model("zfnet-tiny", seed=0).eval()
        >>> proj = project_units(model, torch.randn(2, 3, 32, 32), "conv5", torch.tensor([[3, 1, 2]]))
        >>> proj.images.shape
        torch.Size([2, 1, 3, 32, 32])
    """
    units = torch.as_tensor(units, dtype=torch.long, device=images.device)
    if units.dim() == 2:
        units = units.expand(images.shape[0], -1, -1)
    if units.dim() != 3 or units.shape[-1] != 3 or units.shape[0] != images.shape[0]:
        raise ValueError(f"units must have shape (N, K, 3) of (channel, y, x) with N = images.shape[0] = "
                         f"{images.shape[0]}, got {tuple(units.shape)}")
    return _project(model, images, layer, lambda act: _check_units(act, units, layer), rule)


def project_max(
    model: nn.Module, images: torch.Tensor, layer: str, channels: Sequence[int], *, rule: str = "deconvnet"
) -> Projection:
    """Project the strongest activation of each channel in each image (K = len(channels)).

    Arguments as in :func:`project_units`; ``channels`` is a list of channel indices.

    Example:
        >>> proj = project_max(model, images, "conv5", [0, 7])   # images (N, 3, H, W)
        >>> proj.units[:, :, 0]                                   # the channels, (N, 2)
    """
    chans = _channel_list(channels)
    return _project(model, images, layer, lambda act: _top_units(act, chans, 1, layer), rule)


def project_topk(
    model: nn.Module, images: torch.Tensor, layer: str, channel: int, k: int = 9, *, rule: str = "deconvnet"
) -> Projection:
    """Project the ``k`` strongest positions of one channel in each image (K = k, strongest first).

    Example:
        >>> proj = project_topk(model, image[None], "conv5", 42, k=9)
    """
    chans = _channel_list([channel])
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _project(model, images, layer, lambda act: _top_units(act, chans, k, layer), rule)


# ---------------------------------------------------------------------------------------------
# Validation and unit selection


def _channel_list(channels: Sequence[int]) -> list[int]:
    chans = [int(c) for c in channels]
    if not chans or min(chans) < 0:
        raise ValueError(f"channels must be a non-empty list of indices >= 0, got {list(channels)}")
    return chans


def _check_units(act: torch.Tensor, units: torch.Tensor, layer: str) -> torch.Tensor:
    limits = list(act.shape[1:]) + [1] * (4 - act.dim())  # fc: (F, 1, 1)
    for i, (name, lim) in enumerate(zip(("channel", "y", "x"), limits, strict=False)):
        bad = (units[..., i] < 0) | (units[..., i] >= lim)
        if bool(bad.any()):
            raise ValueError(f"unit {name} out of range for layer {layer!r} of shape {tuple(act.shape[1:])}: "
                             f"got {units[..., i][bad].tolist()[:5]}, expected 0..{lim - 1}")
    return units


def _top_units(act: torch.Tensor, chans: list[int], k: int, layer: str) -> torch.Tensor:
    """(N, len(chans) * k, 3) units: the k largest activations of each channel, per image."""
    if max(chans) >= act.shape[1]:
        raise ValueError(f"channel {max(chans)} out of range for layer {layer!r} with {act.shape[1]} channels")
    if act.dim() == 2:
        if k != 1:
            raise ValueError(f"top-k positions need a conv layer; {layer!r} is fully connected (use k=1)")
        ch = torch.tensor(chans, device=act.device)
        zeros = torch.zeros_like(ch)
        return torch.stack([ch, zeros, zeros], -1).expand(act.shape[0], -1, -1).clone()
    n, _, h, w = act.shape
    if k > h * w:
        raise ValueError(f"k ({k}) exceeds the {h * w} positions of layer {layer!r}")
    flat = act[:, chans].reshape(n, len(chans), h * w)
    pos = flat.topk(k, dim=-1).indices  # (N, C', k), strongest first
    ch = torch.tensor(chans, device=act.device)[None, :, None].expand_as(pos)
    return torch.stack([ch, pos // w, pos % w], -1).reshape(n, len(chans) * k, 3)


def _project(
    model: nn.Module, images: torch.Tensor, layer: str, select: Selector, rule: str, unit_seed: str = "value"
) -> Projection:
    if rule not in RULE_CHOICES:
        raise ValueError(f"rule must be one of {', '.join(RULE_CHOICES)}, got {rule!r}")
    if rule == "auto":
        rule, _ = resolve_rule(model, layer, rule)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}; "
                         "add a batch dim with images[None]")
    modes: dict[nn.Module, bool] = {m: m.training for m in model.modules()}
    inplace: list[Any] = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    try:
        model.eval()
        for m in inplace:  # the rule hooks need the activation's input intact
            m.inplace = False
        with torch.enable_grad():
            if hasattr(model, "stages") and hasattr(model, "resolve"):
                from convlens.deconv import convnet_way as _deconv_explicit

                out, values, units = _deconv_explicit.project(model, images.detach(), layer, select, rule, unit_seed)
            else:
                out, values, units = _project_generic(model, images.detach(), layer, select, rule, unit_seed)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m in inplace:
            m.inplace = True
    boxes = _boxes(model, layer, units, (images.shape[-2], images.shape[-1]))
    return Projection(out.detach(), values.detach(), units, boxes, layer, rule)


def _boxes(model: nn.Module, layer: str, units: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    name = model.resolve(layer) if hasattr(model, "resolve") else layer  # type: ignore[operator]
    rf = receptive_fields(model, size).get(name)
    H, W = size
    if rf is None or rf.stride == 0:
        box = torch.tensor([0, 0, H, W], device=units.device)
        return box.expand(*units.shape[:2], 4).clone()
    y0 = units[..., 1] * rf.stride + rf.offset
    x0 = units[..., 2] * rf.stride + rf.offset
    return torch.stack([y0.clamp(min=0), x0.clamp(min=0), (y0 + rf.size).clamp(max=H), (x0 + rf.size).clamp(max=W)], -1)


# ---------------------------------------------------------------------------------------------
# Generic autograd path


class _Rectifier(torch.autograd.Function):
    """Identity forward (a copy of the activation's output); backward applies the rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, rule: str) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate)
        ctx.rule = rule
        return y.detach().clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        (gate,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            g = g.clamp(min=0)
        elif ctx.rule == "guided":
            g = g.clamp(min=0) * gate
        else:
            g = g * gate
        return g, None, None, None


class _PassThrough(torch.autograd.Function):
    """Identity forward (a copy of the module's output); backward passes the signal unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return y.detach().clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return g, None


def _rule_hook(rule: str) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        if isinstance(module, _LRN):
            return _PassThrough.apply(inputs[0], out)
        # the gate is read from the output (y > 0 iff x > 0). ReLU6: the rectifying rules ignore its upper
        # clip (a saturated unit, often the strongest, would otherwise project to nothing)
        upper = 6.0 if isinstance(module, nn.ReLU6) and rule == "gradient" else float("inf")
        gate = ((out > 0) & (out < upper)).to(out.dtype)
        return _Rectifier.apply(inputs[0], out, gate, rule)

    return hook


def _check_generic(model: nn.Module, rule: str) -> None:
    if rule == "gradient":
        return
    kinds = {type(m) for m in model.modules()}
    if nn.ReLU6 in kinds:
        warnings.warn("ReLU6 treated as ReLU by the deconvnet/guided rules (its upper clip at 6 is ignored "
                      "on the way down)", stacklevel=5)
    others = sorted(k.__name__ for k in kinds if issubclass(k, _OTHER_ACTIVATIONS))
    if others:
        warnings.warn(f"{', '.join(others)} keep their true gradient under rule {rule!r}; only ReLU/ReLU6 modules "
                      "are rectified", stacklevel=5)
    try:
        from convlens.core.graph import traced

        graph = traced(model).graph  # the trace the generic paths reuse
    except Exception:
        if not kinds & {nn.ReLU, nn.ReLU6}:
            warnings.warn(f"{type(model).__name__} has no nn.ReLU modules: if it calls F.relu, rule {rule!r} "
                          "cannot be applied there and the map is a plain gradient through those relus",
                          stacklevel=5)
        return
    functional = [n.name for n in graph.nodes if (n.op == "call_function" and n.target in (F.relu, torch.relu,
                  F.relu6, F.hardtanh)) or (n.op == "call_method" and n.target in ("relu", "relu_"))]
    if functional:
        raise ValueError(f"rule {rule!r} needs nn.ReLU modules, but {type(model).__name__}.forward calls "
                         f"functional relus ({', '.join(functional[:5])}); replace them with nn.ReLU() modules "
                         "or use rule='gradient'")


def _project_generic(
    model: nn.Module, images: torch.Tensor, layer: str, select: Selector, rule: str, unit_seed: str = "value",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Receptive-field crops where exact, else full images: recorded together and sent down explicitly
    where the graph allows, else one forward per image (see :mod:`convlens.deconv.autograd_way`)."""
    from convlens.deconv import autograd_way as _deconv_generic

    name = model.resolve(layer) if hasattr(model, "resolve") else layer  # type: ignore[operator]
    target = get_module(model, name)
    _check_generic(model, rule)
    plan = _deconv_generic.crop_plan(model, name, (images.shape[-2], images.shape[-1]))  # before the rule hooks
    # full images through the explicit way: one recorded forward of all images gives the layer's output
    # and the gates (no second forward, no rule hooks; large batches go on in pieces below)
    from convlens.deconv import graph_way as _deconv_graph

    recorded = _deconv_graph.record(model, images, name, rule) if plan is None and \
        len(images) <= _deconv_graph.IMAGES else None
    if recorded is not None:
        act, calls = recorded.act, 0
    else:
        with torch.no_grad():
            act, calls = _deconv_generic.forward_to(model, target, images)
    units = select(act)
    n, k = units.shape[:2]
    values = _gather_values(act, units)
    seed = values.reshape(-1) if unit_seed == "value" else torch.ones(n * k, dtype=act.dtype, device=act.device)
    if recorded is not None:
        return recorded.down(units, seed).reshape(n, k, *images.shape[1:]), values, units
    hook = _rule_hook(rule)
    rectifiers = [(m, hook) for m in model.modules()
                  if isinstance(m, (nn.ReLU, nn.ReLU6)) or (rule == "deconvnet" and isinstance(m, _LRN))]
    with hooked(model, rectifiers):
        out = _deconv_generic.project(model, images, target, calls, units, seed, plan, name, rule)
    return out.reshape(n, k, *images.shape[1:]), values, units


def _unit_index(act: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Index tuple (without the batch index) selecting (channel, y, x) of each row of ``act``."""
    return (units[:, 0],) if act.dim() == 2 else (units[:, 0], units[:, 1], units[:, 2])


def _gather_values(act: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    n, k = units.shape[:2]
    img = torch.arange(n, device=act.device).repeat_interleave(k)
    return act[(img, *_unit_index(act, units.reshape(n * k, 3)))].reshape(n, k)

