"""Exact incremental inference for occlusion on any CNN (Krypton, Nakandala et al., SIGMOD 2019).

The model is traced with ``torch.fx``. Every node whose inputs are all *local* and whose operation
is local is part of the local prefix: convolutions (grouped, depthwise, dilated; integer zero
padding), max pooling, average pooling (padding counted), BatchNorm (eval), point-wise activations
(ReLU, ReLU6, hardswish, SiLU ...), LRN (it mixes channels only), and element-wise sums/products of
same-sized maps (residual additions). The first global operation (adaptive pooling, flatten,
linear, a squeeze-excitation's pooling, any operation not listed) ends it for everything that
depends on it.

For a batch of occluders, each local node holds a *patch*: a box per occluder (common size, origin
per occluder) that contains every position the occluder changes, on top of the clean image's
cached activations. A conv/pool recomputes only the output box its input box can change (plus the
halo it reads); an element-wise op works on the union of its inputs' boxes. Once a box covers more
than ``full_fraction`` of its map (the change has spread over most of the map) the node is pasted
into full maps and the rest runs as ordinary batched layers: incremental work only where it saves
work. Global nodes always run on full maps. The result equals full forwards up to float rounding.

Approximate mode (``threshold``: Krypton's projective-field thresholding) caps each box at
``threshold`` of its map per axis, centred on the change; changes outside the cap are dropped.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from convlens.core.graph import classify, output_node, traced
from convlens.core.padding import has_only_same_pad, same_padding

__all__ = ["IncrementalPlan", "gather_patch", "plan_axis"]

Axis = tuple[Tensor, Tensor, Tensor, int]  # (lo, hi, box start, box length): changed [lo, hi) inside the box

def plan_axis(lo: Tensor, hi: Tensor, n_out: int, k: int, s: int, p: int, cap: int | None = None) -> Axis:
    """Output interval [lo', hi') changed by an input change [lo, hi) through a window (k, s, p),
    and the box computed for it: a length common to all occluders (the longest change, or ``cap``),
    its start shifted inside [0, n_out) at the border (or centred on the change when capped)."""
    lo2 = torch.div(lo + p - k, s, rounding_mode="floor") + 1
    hi2 = -torch.div(-(hi + p), s, rounding_mode="floor")  # ceil((hi + p) / s)
    return _box(lo2.clamp(0, n_out), hi2.clamp(0, n_out), n_out, cap)


def _box(lo: Tensor, hi: Tensor, n: int, cap: int | None) -> Axis:
    length = max(1, int((hi - lo).max()))
    if cap is not None and length > cap:
        length = cap
        start = torch.div(lo + hi - length, 2, rounding_mode="floor").clamp(0, n - length)
        return lo.clamp(start, start + length), hi.clamp(start, start + length), start, length
    return lo, hi, lo.clamp(max=n - length), length


def gather_patch(clean_hwc: Tensor, patch: Tensor, box: list[Axis] | tuple[Axis, Axis], need_start: list[Tensor],
                 need_len: tuple[int, int], offset: int = 0) -> Tensor:
    """(B, C, Ny, Nx) channels-last: clean activations at [need_start, +need_len) per occluder,
    with each occluder's ``patch`` (covering box[axis][2] .. + box[axis][3]) pasted in.
    ``clean_hwc`` is (h, w, C) contiguous, padded by ``offset`` on each side.

    Two whole-batch copies: the regions are read through a sliding-window view of the clean map
    (rows of C contiguous values), then the patches are written over them by flat row index.
    """
    B, C = patch.shape[0], clean_hwc.shape[-1]
    ny, nx = need_len
    windows = clean_hwc.unfold(0, ny, 1).unfold(1, nx, 1).permute(0, 1, 3, 4, 2)  # (h', w', ny, nx, C) view
    out = windows[need_start[0] + offset, need_start[1] + offset]  # (B, ny, nx, C), a fresh tensor
    ly, lx = box[0][3], box[1][3]
    iy = (box[0][2] - need_start[0])[:, None] + torch.arange(ly, device=patch.device)  # (B, ly)
    ix = (box[1][2] - need_start[1])[:, None] + torch.arange(lx, device=patch.device)
    flat = (torch.arange(B, device=patch.device)[:, None, None] * ny + iy[:, :, None]) * nx + ix[:, None, :]
    src = patch.permute(0, 2, 3, 1)  # (B, ly, lx, C)
    valid = ((iy >= 0) & (iy < ny))[:, :, None] & ((ix >= 0) & (ix < nx))[:, None, :]
    rows = out.view(-1, C)
    if bool(valid.all()):
        rows[flat.reshape(-1)] = src.reshape(-1, C)
    else:
        rows[flat[valid]] = src[valid]
    return out.permute(0, 3, 1, 2)


class _Patch:
    """A node's value for a batch of occluders: ``data`` (B, C, ly, lx) inside ``box`` (per axis)."""

    def __init__(self, data: Tensor, box: tuple[Axis, Axis]) -> None:
        self.data, self.box = data, box


class IncrementalPlan:
    """The traced model, its local prefix, and the clean image's activations of every node.

    Raises whatever ``torch.fx.symbolic_trace`` raises for models it cannot trace, and
    ``ValueError`` if ``layer`` is not a module of the trace.
    """

    def __init__(self, model: nn.Module, image: Tensor, layer: str, fill: float, window: int, *,
                 full_fraction: float = 0.5, threshold: float | None = None) -> None:
        self.gm = traced(model)
        self.modules = dict(self.gm.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        self.window, self.full_fraction, self.threshold = window, full_fraction, threshold
        self.channels = image.shape[1]
        self.fill = torch.as_tensor(fill, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
        self.layer_node = self._find(layer)
        self.kind: dict[fx.Node, Any] = {}
        self.full_pad: dict[fx.Node, tuple[int, int, int, int]] = {}  # TF "SAME" convs: F.pad before the conv
        clean = self.evaluate(image)
        self.clean = clean
        for node in self.nodes:
            self.kind[node] = self._classify(node)
        self.logits0 = clean[self.nodes[-1].args[0]]  # type: ignore[index]
        self.act0 = clean[self.layer_node]
        self.weights: dict[fx.Node, Tensor] = {}
        self.bias: dict[fx.Node, Tensor | None] = {}
        for n, k in self.kind.items():
            if k is not None and k[0] == "conv":
                self._fold(n)
        # clean maps as (h, w, C), plain and padded by a margin (value -inf for max pooling), made
        # when first needed: the approximate mode and small grids never touch most of them
        self.margins: dict[tuple[fx.Node, float], int] = {}
        for node, kind in self.kind.items():
            if kind is not None and kind[0] in ("conv", "max", "avg"):
                key = (node.all_input_nodes[0], -math.inf if kind[0] == "max" else 0.0)
                self.margins[key] = max(self.margins.get(key, 0), kind[1] + kind[2])
        self.padded = _Lazy(lambda key: (F.pad(clean[key[0]][0], (self.margins[key],) * 4, value=key[1])
                                          .permute(1, 2, 0).contiguous(), self.margins[key]))
        self.hwc = _Lazy(lambda n: clean[n][0].permute(1, 2, 0).contiguous())
        self.clamps = self._inplace_clamps()

    def _inplace_clamps(self) -> dict[fx.Node, tuple[float, float]]:
        """ReLU/ReLU6/Hardtanh nodes whose input is a fresh tensor that nothing else reads (the output
        of a conv, pooling or sum, through folded BatchNorms): (min, max) for an in-place clamp.
        ``nn.ReLU6`` runs ``hardtanh``, which on channels-last maps costs 2-4x a conv's time; ``clamp_``
        costs a fraction of it, with the same values."""
        out: dict[fx.Node, tuple[float, float]] = {}
        for node, kind in self.kind.items():
            m: Any = self.modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]
            # exact types: a subclass may compute something else in its forward
            if kind != ("point",) or type(m) not in (nn.ReLU, nn.ReLU6, nn.Hardtanh) or m._forward_hooks \
                    or m._forward_pre_hooks:
                continue
            src = node.all_input_nodes[0]
            while self.kind.get(src) == ("identity",) and len(src.users) == 1 and src is not self.layer_node:
                src = src.all_input_nodes[0]
            fresh = self.kind.get(src) is not None and self.kind[src][0] in ("conv", "max", "avg", "binary")
            if fresh and len(src.users) == 1 and src is not self.layer_node:
                out[node] = (0.0, math.inf) if type(m) is nn.ReLU else (float(m.min_val), float(m.max_val))
        return out

    def _point(self, node: fx.Node, data: Tensor) -> Tensor:
        if node in self.clamps:
            lo, hi = self.clamps[node]
            return data.clamp_(min=lo) if hi == math.inf else data.clamp_(lo, hi)
        return self._call(node, {node.all_input_nodes[0]: data})

    def _fold(self, node: fx.Node) -> None:
        """Channels-last weights of a conv node; a BatchNorm that is its only user is folded in
        (the BN node then passes its input through: one op fewer per layer, same values)."""
        conv: Any = self.modules[node.target]  # type: ignore[index]
        weight, bias = conv.weight, conv.bias
        users = list(node.users)
        bn = self.modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None  # type: ignore[arg-type]
        if isinstance(bn, nn.BatchNorm2d) and self.kind.get(users[0]) == ("point",) and bn.running_var is not None \
                and not bn.training:
            scale = bn.running_var.add(bn.eps).rsqrt() * (bn.weight if bn.weight is not None else 1)
            shift = (bn.bias if bn.bias is not None else 0) - bn.running_mean * scale  # type: ignore[operator]
            weight = weight * scale.reshape(-1, 1, 1, 1)
            bias = shift if bias is None else bias * scale + shift
            self.kind[users[0]] = ("identity",)
        self.weights[node] = weight.contiguous(memory_format=torch.channels_last)
        self.bias[node] = bias

    # ------------------------------------------------------------------ graph analysis

    def _find(self, layer: str) -> fx.Node:
        node = output_node(self.nodes, layer)
        if node is None:
            raise ValueError(f"layer {layer!r} is not a module of the traced graph")
        return node

    def _same_pad(self, node: fx.Node, m: nn.Module, win: Any) -> Any:
        """A conv whose only hook is convlens's TF "SAME" padding: asymmetric padding, known from the
        input size. Any other hook may change anything: the node is treated as global."""
        if not has_only_same_pad(m) or win is None:
            return None
        pad = same_padding(m, *self.clean[node.all_input_nodes[0]].shape[-2:])
        if pad[0] != pad[2]:
            return None
        self.full_pad[node] = pad
        return (win[0], win[1], win[2], pad[0], win[4])

    def _classify(self, node: fx.Node) -> Any:
        return classify(node, self.kind, self.modules, self._same_pad)

    # ------------------------------------------------------------------ evaluation

    def _call(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)  # type: ignore[index]
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)  # type: ignore[arg-type]
        if node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        raise AssertionError(node.op)

    def evaluate(self, x: Tensor) -> dict[fx.Node, Any]:
        """Every node's output for a plain forward of ``x``."""
        env: dict[fx.Node, Any] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = x
            elif node.op != "output":
                env[node] = self._call(node, env)
        return env

    def run(self, ys: Tensor, xs: Tensor) -> tuple[Tensor, Any]:
        """(logits (B, K), the layer's value: a full (B, C, h, w) tensor or a patch) for occluders at (ys, xs)."""
        env: dict[fx.Node, Any] = {}
        layer_value = None
        for node in self.nodes:
            if node.op == "output":
                break
            kind = self.kind[node]
            if kind is None:
                env[node] = self._call(node, _FullView(self, env, len(ys)))
            elif kind[0] == "identity":
                env[node] = env[node.all_input_nodes[0]]
            elif kind[0] == "input":
                box = ((ys, ys + self.window, ys, self.window), (xs, xs + self.window, xs, self.window))
                env[node] = _Patch(self.fill.expand(len(ys), self.channels, self.window, self.window), box)
            elif kind[0] == "point":
                src = env[node.all_input_nodes[0]]
                env[node] = _Patch(self._point(node, src.data), src.box) if isinstance(src, _Patch) \
                    else self._point(node, src)
            elif kind[0] == "binary":
                env[node] = self._binary(node, env, len(ys))
            else:
                env[node] = self._windowed(node, kind, env, len(ys))
            if node is self.layer_node:
                layer_value = env[node]
        out = self.nodes[-1].args[0]
        logits = env[out]  # type: ignore[index]
        if isinstance(logits, _Patch):
            logits = self.full(out, logits, len(ys))  # type: ignore[arg-type]
        return logits, layer_value

    def full(self, node: fx.Node, value: Any, batch: int) -> Tensor:
        """``value`` as full (B, C, h, w) maps (a patch pasted into the clean activations)."""
        if not isinstance(value, _Patch):
            return value
        h, w = self.clean[node].shape[-2:]
        zero = torch.zeros(batch, dtype=torch.long, device=value.data.device)
        return gather_patch(self.hwc[node], value.data, value.box, [zero, zero], (h, w))

    def _cap(self, n: int) -> int | None:
        return None if self.threshold is None else max(1, math.ceil(self.threshold * n))

    def _too_big(self, box: tuple[Axis, Axis], n: tuple[int, int]) -> bool:
        return box[0][3] * box[1][3] >= self.full_fraction * n[0] * n[1]

    def _windowed(self, node: fx.Node, kind: tuple, env: dict[fx.Node, Any], batch: int) -> Any:
        _, k, s, p, _ = kind
        src_node = node.all_input_nodes[0]
        src = env[src_node]
        n_out = self.clean[node].shape[-2:]
        if isinstance(src, _Patch):
            box = tuple(plan_axis(src.box[a][0], src.box[a][1], n_out[a], k, s, p, self._cap(n_out[a]))
                        for a in range(2))
            if not self._too_big(box, n_out):  # type: ignore[arg-type]
                pad, margin = self.padded[(src_node, -math.inf if kind[0] == "max" else 0.0)]
                need_start = [b[2] * s - p for b in box]
                need_len = ((box[0][3] - 1) * s + k, (box[1][3] - 1) * s + k)
                x = gather_patch(pad, src.data, src.box, need_start, need_len, offset=margin)
                return _Patch(self._window_op(node, kind, x), box)  # type: ignore[arg-type]
            src = self.full(src_node, src, batch)
        if kind[0] == "conv":  # channels-last weights: the fast CPU kernels
            m: Any = self.modules[node.target]  # type: ignore[index]
            if node in self.full_pad:
                src, p = F.pad(src, self.full_pad[node]), 0
            return F.conv2d(src, self.weights[node], self.bias[node], s, p, kind[4], m.groups)
        return self.modules[node.target](src)  # type: ignore[index]

    def _window_op(self, node: fx.Node, kind: tuple, x: Tensor) -> Tensor:
        m: Any = self.modules[node.target]  # type: ignore[index]
        _, _, s, _, d = kind
        if kind[0] == "conv":
            return F.conv2d(x, self.weights[node], self.bias[node], s, 0, d, m.groups)
        if kind[0] == "max":
            return F.max_pool2d(x, m.kernel_size, s, 0, d)  # -inf padding stands for the border / ceil mode
        return F.avg_pool2d(x, m.kernel_size, s, 0)  # zero padding counted, as count_include_pad

    def _binary(self, node: fx.Node, env: dict[fx.Node, Any], batch: int) -> Any:
        a_node, b_node = node.args  # type: ignore[misc]
        a, b = env[a_node], env[b_node]  # type: ignore[index]
        op: Any = node.target
        if isinstance(a, _Patch) and isinstance(b, _Patch):
            n = self.clean[node].shape[-2:]
            box = tuple(_box(torch.minimum(a.box[i][0], b.box[i][0]), torch.maximum(a.box[i][1], b.box[i][1]),
                             n[i], self._cap(n[i])) for i in range(2))
            if not self._too_big(box, n):  # type: ignore[arg-type]
                start = [box[0][2], box[1][2]]
                ln = (box[0][3], box[1][3])
                xa = gather_patch(self.hwc[a_node], a.data, a.box, start, ln)  # type: ignore[index]
                xb = gather_patch(self.hwc[b_node], b.data, b.box, start, ln)  # type: ignore[index]
                return _Patch(op(xa, xb), box)  # type: ignore[arg-type]
        return op(self.full(a_node, a, batch), self.full(b_node, b, batch))  # type: ignore[arg-type]


class _Lazy(dict):  # type: ignore[type-arg]
    """A dict whose missing values are made by ``make(key)`` on first access (thread-safe enough:
    two threads may both make a value, the same one)."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.make(key)
        return value


class _FullView(dict):
    """An environment that materializes patches into full maps on access (for global nodes)."""

    def __init__(self, plan: IncrementalPlan, env: dict[fx.Node, Any], batch: int) -> None:
        super().__init__()
        self.plan, self.env, self.batch = plan, env, batch

    def __getitem__(self, node: fx.Node) -> Any:
        value = self.env[node]
        if isinstance(value, _Patch):
            value = self.env[node] = self.plan.full(node, value, self.batch)
        return value
