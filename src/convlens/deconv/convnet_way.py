"""The explicit, batched, receptive-field-cropped deconvnet for :class:`~convlens.nets.convnet.ConvNet`
(Sec. 2.1, Fig. 1). Conventions are documented in :mod:`convlens.deconv.project`; this module is its engine.

One forward pass records, per stage, what the way down needs: max-pool switches (indices into
the pooled input), relu gates (``guided``/``gradient``) and LRN inputs (their true gradient for
``guided``/``gradient``). Then all B = N*K units go down together. Each unit's signal is kept
only inside a *window* (origin per unit, size shared by all units) that contains everything the
unit can reach at that stage: a transposed conv of a window of size w gives a window of size
``(w - 1) * stride + kernel`` at origin ``origin * stride - padding``; windows are then clipped to
the real feature map (what falls outside is padding, whose gradient is dropped). At conv5 of
ZFNet the windows are 13 -> 67 instead of the full 13 -> 110 maps, which is where most of the
speed comes from; the result is identical to computing full maps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_LRN = (nn.LocalResponseNorm, nn.CrossMapLRN2d)
CHUNK = 144  # units per pass down; see benchmarks/deconv.py


@dataclass
class _Window:
    """Signal of B units: data (B, C, h, w) whose [0, 0] sits at (oy, ox) of the feature map."""

    data: torch.Tensor
    oy: torch.Tensor  # (B,) long
    ox: torch.Tensor


def _pair(v: object) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # type: ignore[return-value,call-overload]


def _record(model: nn.Module, images: torch.Tensor, top: str, rule: str) -> tuple[torch.Tensor, dict]:
    """Forward to stage ``top``; return its output and what each stage's way down needs."""
    rec: dict[str, object] = {}
    x = images
    with torch.no_grad():
        for name, m in model.stages():  # type: ignore[operator]
            if isinstance(m, nn.MaxPool2d):
                if m.return_indices:
                    raise ValueError(f"{name}: MaxPool2d(return_indices=True) is not supported")
                y, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode,
                                      return_indices=True)
                rec[name] = (_switch_codes(m, idx, x.shape[-1]), x.shape)
            elif isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise ValueError(f"{name}: only integer zero padding is supported by the explicit deconvnet")
                rec[name] = x.shape
                y = m(x)
            else:
                y = m(x)
                if isinstance(m, nn.ReLU) and rule != "deconvnet":
                    rec[name] = y > 0
                elif isinstance(m, _LRN) and rule != "deconvnet":
                    rec[name] = x
                elif isinstance(m, nn.Flatten):
                    rec[name] = x.shape
            x = y
            if name == top:
                return x, rec
    raise AssertionError(f"stage {top} not reached")


def _crop_records(t: torch.Tensor, img: torch.Tensor, win: _Window) -> torch.Tensor:
    """(N, C, H, W) forward record -> (B, C, h, w) at each unit's window.

    Positions of a window outside the map read the nearest border value; the signal is zero
    there (see :func:`_clip`), so these values never matter, and a border switch still points
    inside the window (the window straddles the border)."""
    n, c, H, W = t.shape
    h, w = win.data.shape[-2:]
    rows = (win.oy[:, None] + torch.arange(h, device=t.device)).clamp(0, H - 1)  # (B, h)
    cols = (win.ox[:, None] + torch.arange(w, device=t.device)).clamp(0, W - 1)
    pos = (rows[:, :, None] * W + cols[:, None, :]).view(-1, 1, h * w)  # (B, 1, h*w)
    b = len(img)
    if n == 1:  # one image (the common case): gather through broadcast views, no (B, C, h*w) index
        return t.reshape(1, c, H * W).expand(b, c, H * W).gather(2, pos.expand(b, c, h * w)).view(b, c, h, w)
    base = (img[:, None] * c + torch.arange(c, device=t.device)) * (H * W)  # (B, C)
    return t.reshape(-1)[(base[:, :, None] + pos).view(-1)].view(-1, c, h, w)


def _shift(data: torch.Tensor, d: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Per row b: data[b] re-indexed along ``dim`` by d[b] + arange(size), zero outside."""
    idx = d[:, None] + torch.arange(size, device=data.device)  # (B, size)
    valid = (idx >= 0) & (idx < data.shape[dim])
    idx = idx.clamp(0, data.shape[dim] - 1)
    shape = [data.shape[0], 1, 1, 1]
    shape[dim] = size
    expand = list(data.shape)
    expand[dim] = size
    out = data.gather(dim, idx.view(shape).expand(expand))
    return out * valid.view(shape).to(data.dtype)


def _inside(o: torch.Tensor, size: int, limit: int) -> torch.Tensor:
    """(B, size) mask of window positions o + i inside [0, limit)."""
    i = o[:, None] + torch.arange(size, device=o.device)
    return (i >= 0) & (i < limit)


def _clip(win: _Window, H: int, W: int) -> _Window:
    """Zero what falls outside the (H, W) map (it is padding: its gradient is dropped).

    Windows keep their size and may straddle the border; one larger than the map is shrunk to
    the map (origin 0), which keeps later layers from computing more than the full map."""
    data, oy, ox = win.data, win.oy, win.ox
    h, w = data.shape[-2:]
    if h > H:
        data, oy = _shift(data, -oy, H, 2), torch.zeros_like(oy)
        h = H
    if w > W:
        data, ox = _shift(data, -ox, W, 3), torch.zeros_like(ox)
        w = W
    if bool((oy < 0).any() | (oy + h > H).any() | (ox < 0).any() | (ox + w > W).any()):
        mask = _inside(oy, h, H)[:, None, :, None] & _inside(ox, w, W)[:, None, None, :]
        data = data.mul_(mask)  # data is always a fresh tensor here
    return _Window(data, oy, ox)


def _unconv(m: nn.Conv2d, win: _Window, in_shape: torch.Size) -> _Window:
    """Filter with the transposed filters (no bias), then clip to the conv's input map."""
    (sy, sx), (py, px), (dy, dx) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
    if m.groups == 1 and (dy, dx) == (1, 1) and m.out_channels >= 4 * m.in_channels:
        data = _conv_transpose_fold(win.data, m.weight, (sy, sx))
    else:
        data = F.conv_transpose2d(win.data, m.weight, stride=(sy, sx), dilation=(dy, dx), groups=m.groups)
    return _clip(_Window(data, win.oy * sy - py, win.ox * sx - px), in_shape[-2], in_shape[-1])


def _conv_transpose_fold(g: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """conv_transpose2d as one matmul + col2im: about 1.6x faster than the direct kernel on CPU
    when the layer has few input channels (conv1: 3), where the direct kernel is inefficient."""
    b, c, h, w = g.shape
    co, (kh, kw) = weight.shape[1], weight.shape[-2:]
    # (B, Co*kh*kw, h*w)
    cols = torch.bmm(weight.reshape(c, co * kh * kw).t().expand(b, -1, -1), g.reshape(b, c, h * w))
    size = ((h - 1) * stride[0] + kh, (w - 1) * stride[1] + kw)
    return F.fold(cols, size, (kh, kw), stride=stride)


def _switch_codes(m: nn.MaxPool2d, idx: torch.Tensor, width: int) -> torch.Tensor:
    """Flat switch indices -> uint8 code ``dy * span + dx`` of the max inside its pooling window.

    One byte per switch instead of eight, and unpooling needs only a table lookup (see _unpool)."""
    (_, kx), (sy, sx) = _pair(m.kernel_size), _pair(m.stride)
    (py, px), (_, dlx) = _pair(m.padding), _pair(m.dilation)
    span = dlx * (kx - 1) + 1
    ho, wo = idx.shape[-2:]
    y0 = (torch.arange(ho, device=idx.device) * sy - py)[:, None]  # window starts in the input map
    x0 = (torch.arange(wo, device=idx.device) * sx - px)[None, :]
    code = (idx // width - y0) * span + (idx % width - x0)
    assert int(code.max()) < 256
    return code.to(torch.uint8)


def _unpool(m: nn.MaxPool2d, win: _Window, codes: torch.Tensor, in_shape: torch.Size, img: torch.Tensor) -> _Window:
    """Unpool with the switches, SUMMING contributions of overlapping windows (as autograd does)."""
    (ky, kx), (sy, sx) = _pair(m.kernel_size), _pair(m.stride)
    (py, px), (dly, dlx) = _pair(m.padding), _pair(m.dilation)
    b, c, h, w = win.data.shape
    ih, iw = (h - 1) * sy + dly * (ky - 1) + 1, (w - 1) * sx + dlx * (kx - 1) + 1
    span_y, span_x = dly * (ky - 1) + 1, dlx * (kx - 1) + 1
    dev = win.data.device
    # local index in the unpooled window = corner of the pooling window + the switch's offset in it
    corner = (torch.arange(h, device=dev)[:, None] * sy * iw + torch.arange(w, device=dev)[None, :] * sx).view(-1)
    table = (torch.arange(span_y, device=dev)[:, None] * iw + torch.arange(span_x, device=dev)[None, :]).view(-1)
    code = _crop_records(codes, img, win).view(b, c, h * w).long()
    local = table[code] + corner
    out = win.data.new_zeros(b, c, ih * iw)
    out.scatter_add_(2, local, win.data.reshape(b, c, h * w))
    return _clip(_Window(out.view(b, c, ih, iw), win.oy * sy - py, win.ox * sx - px), in_shape[-2], in_shape[-1])


def _down(model: nn.Module, stages: list[tuple[str, nn.Module]], sig: Any, rec: dict,
          img: torch.Tensor, rule: str) -> _Window:
    """Run the signal down through ``stages`` (top first) to the input."""
    for name, m in stages:
        if isinstance(m, nn.ReLU):
            data = sig.data if isinstance(sig, _Window) else sig
            if rule != "deconvnet":
                gate = rec[name][img] if data.dim() == 2 else _crop_records(rec[name], img, sig)
                data = (data.clamp(min=0) if rule == "guided" else data) * gate
            else:
                data = data.clamp_(min=0)  # fresh tensor (conv/unpool/matmul output)
            sig = _Window(data, sig.oy, sig.ox) if isinstance(sig, _Window) else data
        elif isinstance(m, nn.Linear):
            sig = sig @ m.weight  # (B, out) -> (B, in)
        elif isinstance(m, nn.Flatten):
            shape = rec[name]
            zeros = torch.zeros(len(sig), dtype=torch.long, device=sig.device)
            sig = _Window(sig.view(len(sig), *shape[1:]), zeros, zeros)
        elif isinstance(m, nn.Conv2d):
            sig = _unconv(m, sig, rec[name])
        elif isinstance(m, nn.MaxPool2d):
            sig = _unpool(m, sig, rec[name][0], rec[name][1], img)
        elif isinstance(m, _LRN) and rule != "deconvnet":
            sig = _lrn_grad(m, sig, rec[name], img)
        elif not isinstance(m, (nn.Dropout, nn.Identity, *_LRN)):
            raise ValueError(f"explicit deconvnet: unsupported stage {name} ({type(m).__name__})")
    assert isinstance(sig, _Window)
    return sig


def _lrn_grad(m: nn.Module, sig: torch.Tensor | _Window, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor | _Window:
    """True LRN backward (guided/gradient rules). LRN mixes channels only, so windows are exact."""
    xin = x[img] if not isinstance(sig, _Window) else _crop_records(x, img, sig)
    data = sig.data if isinstance(sig, _Window) else sig
    with torch.enable_grad():
        xin = xin.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(m(xin), xin, data)
    return _Window(g, sig.oy, sig.ox) if isinstance(sig, _Window) else g


def project(model: nn.Module, images: torch.Tensor, layer: str, select: Callable[[torch.Tensor], torch.Tensor],
            rule: str, unit_seed: str = "value", chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K, 3, H, W) projections, (N, K) values and (N, K, 3) units of ``layer`` (see deconv).

    ``chunk`` units go down together (all share the one forward pass); chunks keep the working
    set of the lower layers small enough for the CPU caches."""
    top = model.resolve(layer)  # type: ignore[operator]
    act, rec = _record(model, images, top, rule)
    units = select(act)
    n, k = units.shape[:2]
    img = torch.arange(n, device=images.device).repeat_interleave(k)  # unit b belongs to image img[b]
    u = units.reshape(n * k, 3)
    values = act[(img, u[:, 0]) if act.dim() == 2 else (img, u[:, 0], u[:, 1], u[:, 2])]
    seed = values if unit_seed == "value" else torch.ones_like(values)
    stages = model.stages()  # type: ignore[operator]
    upto = stages[: [name for name, _ in stages].index(top) + 1][::-1]
    out = images.new_zeros(n * k, *images.shape[1:])
    with torch.no_grad():  # weights require grad: no graph for the way down
        for s in range(0, n * k, chunk):
            sl = slice(s, s + chunk)
            win = _down(model, upto, _start(act, u[sl], seed[sl]), rec, img[sl], rule)
            _paste(out[sl], win)
    return out.view(n, k, *images.shape[1:]), values.view(n, k), units


def _start(act: torch.Tensor, u: torch.Tensor, seed: torch.Tensor) -> torch.Tensor | _Window:
    """The layer's activations with all but one unit per row zeroed (a 1x1 window for conv layers)."""
    b = torch.arange(len(u), device=act.device)
    if act.dim() == 2:
        sig = act.new_zeros(len(u), act.shape[1])
        sig[b, u[:, 0]] = seed
        return sig
    data = act.new_zeros(len(u), act.shape[1], 1, 1)
    data[b, u[:, 0], 0, 0] = seed
    return _Window(data, u[:, 1].clone(), u[:, 2].clone())


def _paste(out: torch.Tensor, win: _Window) -> None:
    """Add each window into its row of ``out`` (B, C, H, W)."""
    h, w = win.data.shape[-2:]
    H, W = out.shape[-2:]
    rows = (win.oy[:, None] + torch.arange(h, device=out.device)).clamp(0, H - 1)
    cols = (win.ox[:, None] + torch.arange(w, device=out.device)).clamp(0, W - 1)
    bidx = torch.arange(len(out), device=out.device)
    # positions outside the image carry zeros (clipped); accumulate so their clamped duplicates add 0
    out.permute(0, 2, 3, 1).index_put_(
        (bidx[:, None, None], rows[:, :, None], cols[:, None, :]), win.data.permute(0, 2, 3, 1), accumulate=True
    )
