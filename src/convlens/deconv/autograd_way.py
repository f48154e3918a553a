"""Projections on any CNN through autograd (the generic path of :mod:`convlens.deconv.project`).

The rule hooks of :mod:`convlens.deconv.project` rectify the signal at every ReLU; this module decides
what each unit's forward and backward run on:

* **Receptive-field crops.** When every operation up to ``layer`` is local (convolutions, pooling,
  BatchNorm in eval, point-wise activations, residual additions; decided on the ``torch.fx``
  graph, see :func:`convlens.core.graph.is_local`), a unit depends only on the input inside its
  receptive field, so its forward and backward run on a crop around it, batched with the crops of
  other units and images. The crop starts on a multiple of the layer's total stride (every layer's
  sampling grid stays aligned with the full image's) and either at the image border or before the
  receptive field; it ends at the image border or after the receptive field. Zero padding at an
  image border is then the layer's own padding, as in the full image, and what a crop's own edges
  change never reaches the unit: the result equals the full-image projection. Global operations
  (squeeze-excitation pooling, GroupNorm ...) or hooked modules mean full images. convlens's TF
  "SAME" padding hook (3x3 stride-2 convs) is accepted when the image sides are multiples of the
  layer's stride: every size on the way up is then even, in the full image and in the crop, and
  the hook pads 0 above/left like the module's own ``padding=0``.
* **Full images, one forward per image.** Otherwise (or when the crop would cover most of the
  image) each image goes forward once. Where the layer's ancestors are convolutions, BatchNorm,
  ReLU/ReLU6 and additions, the images go forward together and all their units go down together as
  one batch, explicitly (:mod:`convlens.deconv.graph_way`); else autograd stops the forward at ``layer`` and the units'
  backward passes run batched over that one graph (``torch.autograd.grad(..., is_grads_batched=True)``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from convlens.core.capture import StopForward, hooked
from convlens.core.graph import is_local
from convlens.core.receptive_field import receptive_fields
from convlens.deconv import graph_way as _deconv_graph
from convlens.nets.meta import fixed_input_size

CROP_FRACTION = 0.5  # crop when its area is below this share of the image (else full images)


def _capture(store: dict[str, Any], stop_at: int | None) -> Callable[..., None]:
    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        store["act"], store["calls"] = out, store.get("calls", 0) + 1
        if store["calls"] == stop_at:
            raise StopForward  # the forward pass stops at the projected layer

    return hook


def forward_to(
    model: nn.Module, target: nn.Module, x: torch.Tensor, calls: int | None = None
) -> tuple[torch.Tensor, int]:
    """(``target``'s output for ``x``, how often ``target`` was called). With ``calls`` the forward
    stops at that call (the rest of the network is not run); without, the last call's output."""
    store: dict[str, Any] = {}
    with hooked(model, [(target, _capture(store, calls))]):
        model(x)
    if "act" not in store:
        raise ValueError(f"layer module {type(target).__name__} is not called by {type(model).__name__}.forward")
    return store["act"], store["calls"]


def crop_plan(model: nn.Module, layer: str, size: tuple[int, int]) -> tuple[int, int, int, int, int] | None:
    """(crop height, crop width, rf size, stride, offset) when crops are exact and save work, else None."""
    if fixed_input_size(model) is not None:  # crops would not fit its position embeddings
        return None
    rf = receptive_fields(model, size).get(layer)
    if rf is None or rf.stride <= 0:
        return None
    # TF "SAME" padding depends on the input size: exact for crops when every size is even on the way up
    # (image sides divisible by the layer's stride; crops keep that, see below)
    if not is_local(model, layer, same_pad=size[0] % rf.stride == 0 and size[1] % rf.stride == 0):
        return None
    lengths = []
    for n in size:
        length = rf.size + rf.stride - 1
        length += (n - length) % rf.stride  # (n - length) a multiple of the stride: border crops stay aligned
        lengths.append(min(length, n))
    if lengths[0] * lengths[1] > CROP_FRACTION * size[0] * size[1]:
        return None
    return lengths[0], lengths[1], rf.size, rf.stride, rf.offset


def _starts(pos: torch.Tensor, length: int, n: int, stride: int, offset: int) -> torch.Tensor:
    """Crop starts along one axis: a multiple of ``stride``, at or before the RF start (or 0), inside the image."""
    if length >= n:
        return torch.zeros_like(pos)
    start = torch.div((pos * stride + offset).clamp(min=0), stride, rounding_mode="floor") * stride
    return start.clamp(max=n - length)


def project(model: nn.Module, images: torch.Tensor, target: nn.Module, calls: int, units: torch.Tensor,
            seed: torch.Tensor, plan: tuple[int, int, int, int, int] | None, layer: str, rule: str,
            chunk: int = 32) -> torch.Tensor:
    """(N*K, C, H, W) projections of ``units`` (N, K, 3) seeded with ``seed`` (N*K,), the rule hooks
    installed; ``target`` is the layer's module, whose ``calls``-th call gives its output."""
    n, k = units.shape[:2]
    flat = units.reshape(n * k, 3)
    img = torch.arange(n, device=images.device).repeat_interleave(k)
    out = images.new_zeros(n * k, *images.shape[1:])
    if plan is None:
        explicit = _deconv_graph.project(model, images, layer, units, seed, rule)
        if explicit is not None:
            return explicit
        for i in range(n):
            _full_image(model, target, calls, images[i:i + 1], flat[i * k:(i + 1) * k], seed[i * k:(i + 1) * k],
                        out[i * k:(i + 1) * k], chunk)
        return out
    ch, cw, _, stride, offset = plan
    H, W = images.shape[-2:]
    y0 = _starts(flat[:, 1], ch, H, stride, offset)
    x0 = _starts(flat[:, 2], cw, W, stride, offset)
    per = max(chunk, int(chunk * H * W / (ch * cw)))  # crops per batch: about chunk full images of work
    windows = images.unfold(2, ch, 1).unfold(3, cw, 1)  # (N, C, H', W', ch, cw) view
    for s in range(0, n * k, per):
        sl = slice(s, s + per)
        x = windows[img[sl], :, y0[sl], x0[sl]].clone().requires_grad_(True)  # (b, C, ch, cw)
        act, _ = forward_to(model, target, x, calls)
        u = flat[sl]
        idx = (torch.arange(len(x), device=x.device), u[:, 0], u[:, 1] - y0[sl] // stride, u[:, 2] - x0[sl] // stride)
        grad_seed = torch.zeros_like(act)
        grad_seed[idx] = seed[sl].to(act.dtype)
        (g,) = torch.autograd.grad(act, x, grad_seed)
        rows = y0[sl, None] + torch.arange(ch, device=x.device)
        cols = x0[sl, None] + torch.arange(cw, device=x.device)
        b = torch.arange(s, s + len(x), device=x.device)
        out.permute(0, 2, 3, 1)[b[:, None, None], rows[:, :, None], cols[:, None, :]] = g.permute(0, 2, 3, 1)
    return out


def _full_image(model: nn.Module, target: nn.Module, calls: int, image: torch.Tensor, units: torch.Tensor,
                seed: torch.Tensor, out: torch.Tensor, chunk: int) -> None:
    """One forward of ``image`` (1, C, H, W) to the layer; the units' backward passes batched over it."""
    x = image.clone().requires_grad_(True)
    act, _ = forward_to(model, target, x, calls)
    b = torch.arange(len(units), device=x.device)
    for s in range(0, len(units), chunk):
        u = units[s:s + chunk]
        grad_seed = act.new_zeros(len(u), *act.shape)
        idx = (b[:len(u)], 0, u[:, 0]) if act.dim() == 2 else (b[:len(u)], 0, u[:, 0], u[:, 1], u[:, 2])
        grad_seed[idx] = seed[s:s + chunk].to(act.dtype)
        (g,) = torch.autograd.grad(act, x, grad_seed, retain_graph=True, is_grads_batched=True)
        out[s:s + chunk] = g[:, 0]
