"""Explicit batched way down on a traced graph (generic path of :mod:`convlens.deconv.project`, full images).

For a layer whose ancestors are only convolutions (grouped/depthwise/dilated, integer zero
padding or convlens's TF "SAME" padding hook), BatchNorm in eval, ``nn.ReLU``/``nn.ReLU6``
modules, identities/dropout (LRN for ``deconvnet``) and residual additions, one forward of up to
:data:`IMAGES` images records every node (:func:`record`; its output at the layer is what the caller
selects units and seeds from, so the images go forward once); then the units' signals of all those
images go down together as one batch, each sample gated by its own image's forward: transposed
convolutions (no bias; BatchNorm's per-channel scale folded in), the rule at every ReLU (gates
from the recorded forward, exactly as the rule hooks of :mod:`convlens.deconv.project` apply it), and
both branches of an addition. This is what autograd computes with the rule hooks, without
repeating the forward per unit and without vmap (which runs PyTorch's convolution backward once
per unit). Where the signal is large (early layers of a 224x224 image) the batch goes on in
pieces of two: measured on MobileNetV2, 2.2 s instead of 3.3 s for 144 units (see
``benchmarks/deconv.py --model mobilenet_v2``). Nine images' top unit each (a unit page of
``features.16`` projected on demand) took 1.3 CPU-s instead of 2 CPU-s with one image at a time and a
second forward (``benchmarks/explorer_ondemand.py``). Any other operation (max pooling included):
``None`` (the caller falls back to autograd).
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from convlens.core.graph import classified, output_node
from convlens.core.padding import has_only_same_pad, same_padding

_PASS = (nn.Identity, nn.Dropout, nn.Dropout2d)
_LRN = (nn.LocalResponseNorm, nn.CrossMapLRN2d)


def _plan(model: nn.Module, layer: str, rule: str) -> tuple[fx.GraphModule, list[fx.Node], fx.Node] | None:
    def rule_hooked(_node: fx.Node, m: nn.Module, win: Any) -> Any:
        # the rule hooks of convlens.deconv.project sit on the activations: their backward is applied below;
        # TF "SAME" padding (convlens's own pre-hook) is undone by cropping on the way down
        if isinstance(m, (nn.ReLU, nn.ReLU6, *_LRN)) and not m._forward_pre_hooks:
            return ("point",)
        return win if has_only_same_pad(m) else None

    graph = classified(model, rule_hooked)
    if graph is None:
        return None
    gm, nodes, modules, kinds = graph
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
        if isinstance(m, nn.BatchNorm2d) and m.running_var is None:  # batch statistics: not a fixed scale
            return None
        if kind[0] == "point" and isinstance(m, (nn.ReLU, nn.ReLU6, nn.BatchNorm2d, *_PASS)):
            continue
        if kind[0] == "point" and isinstance(m, _LRN) and rule == "deconvnet":
            continue
        return None
    return gm, order, top


SPLIT_NUMEL = 1 << 17  # per-sample signal size (elements) above which the batch goes down in small pieces
SPLIT_BATCH = 2  # ... of this many samples (large maps: the cache, not the FLOPs, sets the speed on CPU)


IMAGES = 16  # images recorded and sent down together (memory: every node of the forward, per image)


class Recorded:
    """One batched forward of ``images`` up to the layer, every node kept; :meth:`down` sends units down.

    ``act`` is the layer's output for the images (what ``forward_to`` gives: the last call of the layer).
    """

    def __init__(self, plan: tuple[fx.GraphModule, list[fx.Node], fx.Node], images: torch.Tensor, rule: str) -> None:
        gm, order, top = plan
        modules = dict(gm.named_modules())
        env: dict[fx.Node, Any] = {}
        with torch.no_grad():
            for node in order:  # the forward of all images at once, every node recorded
                if node.op == "placeholder":
                    env[node] = images
                elif node.op == "call_module":
                    env[node] = modules[node.target](env[node.all_input_nodes[0]])  # type: ignore[index]
                else:
                    env[node] = env[node.args[0]] + env[node.args[1]]  # type: ignore[index]
        self.top, self.act = top, env[top]
        self.way = _WayDown(order, top, modules, rule)
        self.way.start_image(env)

    def down(self, units: torch.Tensor, seed: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(N*K, C, H, W) projections of ``units`` (N, K, 3) of the recorded images, seeded with ``seed`` (N*K,):
        the units of all images go down together (each row gated by its own image's forward)."""
        act = self.act
        n, k = units.shape[:2]
        flat = units.reshape(n * k, 3)
        img = torch.arange(n, device=act.device).repeat_interleave(k)
        out = []
        with torch.no_grad():
            for s in range(0, n * k, chunk * max(1, n)):
                u, rows = flat[s:s + chunk * max(1, n)], img[s:s + chunk * max(1, n)]
                g = act.new_zeros(len(u), *act.shape[1:])
                g[torch.arange(len(u)), u[:, 0], u[:, 1], u[:, 2]] = seed[s:s + len(u)].to(act.dtype)
                out.append(self.way.run({self.top: g.contiguous(memory_format=torch.channels_last)}, 0, rows))
        return torch.cat(out)


def record(model: nn.Module, images: torch.Tensor, layer: str, rule: str) -> Recorded | None:
    """:class:`Recorded` for ``images`` (N, C, H, W), or None when the explicit way does not support the layer."""
    plan = _plan(model, layer, rule)
    return None if plan is None else Recorded(plan, images, rule)


def project(model: nn.Module, images: torch.Tensor, layer: str, units: torch.Tensor, seed: torch.Tensor,
            rule: str, chunk: int = 16) -> torch.Tensor | None:
    """(N*K, C, H, W) projections of ``units`` (N, K, 3) seeded with ``seed``; None if unsupported.
    :data:`IMAGES` images at a time go forward and down together."""
    plan = _plan(model, layer, rule)
    if plan is None:
        return None
    n, k = units.shape[:2]
    out = []
    for s in range(0, n, IMAGES):
        rec = Recorded(plan, images[s:s + IMAGES], rule)
        out.append(rec.down(units[s:s + IMAGES], seed[s * k:(s + IMAGES) * k], chunk))
    return torch.cat(out) if out else images.new_zeros(0, *images.shape[1:])


class _WayDown:
    """The units' signals from ``top`` down to the input, over one recorded forward of a batch of images
    (each sample of the signal is gated by its own image: ``rows``).

    BatchNorm scales are folded into the transposed filters of the conv below them (once), the
    rule's gates are computed once per image, every tensor is channels-last (oneDNN's fast
    kernels), and where a signal gets large the batch goes on in pieces of :data:`SPLIT_BATCH`
    samples: on CPU, a depthwise layer of a 112x112 map costs 5-10x more per sample in a batch of
    16 than of 1 or 2 (the batch no longer fits in cache)."""

    def __init__(self, order: list[fx.Node], top: fx.Node, modules: dict[str, nn.Module], rule: str) -> None:
        self.rev = list(reversed(order))
        self.modules, self.rule = modules, rule
        self.weights: dict[fx.Node, torch.Tensor] = {}  # conv node -> channels-last weight, BatchNorm folded in
        self.scales: dict[fx.Node, torch.Tensor | None] = {}  # BatchNorm node -> scale (None: folded)
        for node in order:
            m = modules.get(str(node.target)) if node.op == "call_module" else None
            if isinstance(m, nn.BatchNorm2d):
                scale = m.running_var.add(m.eps).rsqrt()  # type: ignore[union-attr]
                if m.weight is not None:
                    scale = scale * m.weight
                src = node.all_input_nodes[0]
                conv = modules[str(src.target)] if src.op == "call_module" else None
                if isinstance(conv, nn.Conv2d) and len(src.users) == 1:
                    self.weights[src] = conv.weight * scale.reshape(-1, 1, 1, 1)
                    self.scales[node] = None
                else:
                    self.scales[node] = scale.reshape(1, -1, 1, 1)
        for node in order:
            m = modules.get(str(node.target)) if node.op == "call_module" else None
            if isinstance(m, nn.Conv2d):
                self.weights[node] = self.weights.get(node, m.weight).contiguous(memory_format=torch.channels_last)
        self.zero = torch.zeros(())
        self.env: dict[fx.Node, Any] = {}
        self.gates: dict[fx.Node, torch.Tensor] = {}

    def start_image(self, env: dict[fx.Node, Any]) -> None:
        self.env, self.gates = env, {}
        first = next(iter(env.values()))
        self.zero = first.new_zeros(())
        self.arange = torch.arange(len(first), device=first.device)

    def _gate(self, node: fx.Node, m: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        """gradient: the relu's derivative (0/1); guided: the upper bound of the signal (0 where the relu
        is off, +inf where on), so that one clamp both rectifies and gates."""
        if node not in self.gates:
            y = self.env[node]
            upper = 6.0 if isinstance(m, nn.ReLU6) and self.rule == "gradient" else float("inf")
            on = ((y > 0) & (y < upper) if upper < float("inf") else y > 0).contiguous(
                memory_format=torch.channels_last)  # the mask, not the float gate, changes layout (4x fewer bytes)
            gate = torch.where(on, float("inf"), 0.0) if self.rule == "guided" else on
            self.gates[node] = gate.to(y.dtype).contiguous(memory_format=torch.channels_last)
        gate = self.gates[node]
        if len(gate) == 1:
            return gate  # one image: broadcast
        r = rows.tolist()
        if r == list(range(r[0], r[0] + len(r))):
            return gate[r[0]:r[0] + len(r)]  # one row per image, in order: a view
        if len(set(r)) == 1:
            return gate[r[0]:r[0] + 1]  # one image's units: broadcast
        return gate[rows]

    def run(self, grads: dict[fx.Node, torch.Tensor], start: int, rows: torch.Tensor) -> torch.Tensor:
        """The signal at the input, going down from position ``start`` of the reversed graph with the
        pending signals ``grads`` (node -> signal at its output); ``rows``: each sample's image in the
        recorded forward."""
        for pos in range(start, len(self.rev)):
            node = self.rev[pos]
            if node not in grads:
                continue
            g = grads[node]
            if len(g) > SPLIT_BATCH and g[0].numel() > SPLIT_NUMEL:
                return torch.cat([self.run({nd: t[s:s + SPLIT_BATCH] for nd, t in grads.items()}, pos,
                                           rows[s:s + SPLIT_BATCH])
                                  for s in range(0, len(g), SPLIT_BATCH)])
            del grads[node]
            if node.op == "placeholder":
                return g
            if node.op != "call_module":  # an addition: the signal goes down both branches
                for a in node.all_input_nodes:
                    grads[a] = grads[a] + g if a in grads else g
                continue
            src = node.all_input_nodes[0]
            g = self._step(node, self.modules[str(node.target)], g, self.env[src].shape[-2:], rows)
            grads[src] = grads[src] + g if src in grads else g
        raise AssertionError("the input was not reached")

    def _step(self, node: fx.Node, m: nn.Module, g: torch.Tensor, x_shape: torch.Size, rows: torch.Tensor
              ) -> torch.Tensor:
        if isinstance(m, nn.Conv2d):
            pad = same_padding(m, *x_shape) if has_only_same_pad(m) else (0, 0, 0, 0)
            padded = (x_shape[0] + pad[2] + pad[3], x_shape[1] + pad[0] + pad[1])
            extra = []
            for ax in range(2):
                k_eff = m.dilation[ax] * (m.kernel_size[ax] - 1) + 1
                extra.append(padded[ax] - ((g.shape[-2 + ax] - 1) * m.stride[ax] - 2 * m.padding[ax] + k_eff))  # type: ignore[operator]
            g = F.conv_transpose2d(g, self.weights[node], None, m.stride, m.padding, tuple(extra),  # type: ignore[arg-type]
                                   m.groups, m.dilation)  # type: ignore[arg-type]
            if any(pad):
                g = g[..., pad[2]:g.shape[-2] - pad[3], pad[0]:g.shape[-1] - pad[1]]
            return g
        if isinstance(m, nn.BatchNorm2d):
            scale = self.scales[node]
            return g if scale is None else g * scale
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            if self.rule == "deconvnet":
                return g.clamp(min=0)
            gate = self._gate(node, m, rows)
            return torch.clamp(g, min=self.zero, max=gate) if self.rule == "guided" else g * gate
        return g  # identity, dropout, LRN (deconvnet: passed straight through)
