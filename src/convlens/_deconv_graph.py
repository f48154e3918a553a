"""Explicit batched way down on a traced graph (generic path of :mod:`convlens.deconv`, full images).

For a layer whose ancestors are only convolutions (grouped/depthwise/dilated, integer zero
padding), BatchNorm in eval, ``nn.ReLU``/``nn.ReLU6`` modules, identities/dropout (LRN for
``deconvnet``) and residual additions, one forward of the image records every node; then the
units' signals go down together as one batch: transposed convolutions (no bias), BatchNorm's
per-channel scale, the rule at every ReLU (gates from the recorded forward, exactly as the rule
hooks of :mod:`convlens.deconv` apply it), and both branches of an addition. This is what autograd
computes with the rule hooks, without repeating the forward per unit and without vmap (which
runs PyTorch's convolution backward once per unit). Any other operation: ``None`` (the caller
falls back to autograd).
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ._incremental import classify, output_node

_PASS = (nn.Identity, nn.Dropout, nn.Dropout2d)
_LRN = (nn.LocalResponseNorm, nn.CrossMapLRN2d)


def _plan(model: nn.Module, layer: str, rule: str) -> tuple[fx.GraphModule, list[fx.Node], fx.Node] | None:
    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        return None
    nodes, modules = list(gm.graph.nodes), dict(gm.named_modules())
    kinds: dict[fx.Node, Any] = {}
    def rule_hooked(_node: fx.Node, m: nn.Module, _win: Any) -> Any:
        # the rule hooks of convlens.deconv sit on the activations: their backward is applied below
        return ("point",) if isinstance(m, (nn.ReLU, nn.ReLU6, *_LRN)) and not m._forward_pre_hooks else None

    for node in nodes:
        kinds[node] = classify(node, kinds, modules, rule_hooked)
    top = output_node(nodes, layer)
    if top is None or kinds[top] is None:
        return None
    need, stack = set(), [top]
    while stack:
        n = stack.pop()
        if n not in need:
            need.add(n)
            stack.extend(n.all_input_nodes)
    order = [n for n in nodes if n in need]
    for n in order:
        kind = kinds[n]
        if kind[0] == "input" or (kind[0] == "conv" and n.op == "call_module"):
            continue
        if kind[0] == "binary" and n.target in (operator.add, torch.add):
            continue
        m = modules.get(n.target) if n.op == "call_module" else None  # type: ignore[arg-type]
        if kind[0] == "point" and isinstance(m, (nn.ReLU, nn.ReLU6, nn.BatchNorm2d, *_PASS)):
            continue
        if kind[0] == "point" and isinstance(m, _LRN) and rule == "deconvnet":
            continue
        return None
    return gm, order, top


def project(model: nn.Module, images: torch.Tensor, layer: str, units: torch.Tensor, seed: torch.Tensor,
            rule: str, chunk: int = 16) -> torch.Tensor | None:
    """(N*K, C, H, W) projections of ``units`` (N, K, 3) seeded with ``seed``; None if unsupported."""
    plan = _plan(model, layer, rule)
    if plan is None:
        return None
    gm, order, top = plan
    modules = dict(gm.named_modules())
    n, k = units.shape[:2]
    out = images.new_zeros(n * k, *images.shape[1:])
    with torch.no_grad():
        for i in range(n):
            env: dict[fx.Node, Any] = {}
            for node in order:  # forward of image i, every node recorded
                if node.op == "placeholder":
                    env[node] = images[i:i + 1]
                elif node.op == "call_module":
                    env[node] = modules[node.target](env[node.all_input_nodes[0]])  # type: ignore[index]
                else:
                    env[node] = env[node.args[0]] + env[node.args[1]]  # type: ignore[index]
            act = env[top]
            for s in range(0, k, chunk):
                u = units[i, s:s + chunk]
                g = act.new_zeros(len(u), *act.shape[1:])
                g[torch.arange(len(u)), u[:, 0], u[:, 1], u[:, 2]] = seed[i * k + s:i * k + s + len(u)].to(act.dtype)
                out[i * k + s:i * k + s + len(u)] = _down(order, top, env, modules, g, rule)
    return out


def _down(order: list[fx.Node], top: fx.Node, env: dict[fx.Node, Any], modules: dict[str, nn.Module],
          g_top: torch.Tensor, rule: str) -> torch.Tensor:
    grads: dict[fx.Node, torch.Tensor] = {top: g_top}
    folded: dict[fx.Node, torch.Tensor] = {}  # BatchNorm node -> scale applied by the conv below it

    def send(node: fx.Node, g: torch.Tensor) -> None:
        grads[node] = grads[node] + g if node in grads else g

    for node in reversed(order):
        if node not in grads:
            continue
        g = grads.pop(node)
        if node.op == "placeholder":
            return g
        if node.op != "call_module":  # an addition: the signal goes down both branches
            for a in node.all_input_nodes:
                send(a, g)
            continue
        m: Any = modules[str(node.target)]
        src = node.all_input_nodes[0]
        if isinstance(m, nn.Conv2d):
            weight = m.weight
            if len(node.users) == 1 and next(iter(node.users)) in folded:  # the BatchNorm's scale, folded in
                weight = weight * folded[next(iter(node.users))].reshape(-1, 1, 1, 1)
            x_shape = env[src].shape[-2:]
            extra: list[int] = []
            for ax in range(2):
                k_eff = m.dilation[ax] * (m.kernel_size[ax] - 1) + 1
                extra.append(int(x_shape[ax]) - ((g.shape[-2 + ax] - 1) * m.stride[ax] - 2 * m.padding[ax] + k_eff))  # type: ignore[operator]
            cl = torch.channels_last  # oneDNN's fast kernels
            g = F.conv_transpose2d(g.contiguous(memory_format=cl), weight.contiguous(memory_format=cl), None,
                                   m.stride, m.padding, tuple(extra), m.groups, m.dilation)  # type: ignore[arg-type]
        elif isinstance(m, nn.BatchNorm2d):
            scale = m.running_var.add(m.eps).rsqrt()  # type: ignore[union-attr]
            if m.weight is not None:
                scale = scale * m.weight
            if src.op == "call_module" and isinstance(modules[str(src.target)], nn.Conv2d) and len(src.users) == 1:
                folded[node] = scale
            else:
                g = g * scale.reshape(1, -1, 1, 1)
        elif isinstance(m, (nn.ReLU, nn.ReLU6)):
            y = env[node]
            upper = 6.0 if isinstance(m, nn.ReLU6) and rule == "gradient" else float("inf")
            gate = ((y > 0) & (y < upper)).to(g.dtype).contiguous(memory_format=torch.channels_last)
            g = g.contiguous(memory_format=torch.channels_last)  # same layout: fast element-wise ops
            g = g.clamp(min=0) if rule == "deconvnet" else g.clamp(min=0).mul_(gate) if rule == "guided" else g * gate
        send(src, g)
    raise AssertionError("the input was not reached")
