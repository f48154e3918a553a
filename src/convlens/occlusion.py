"""Occlusion sensitivity (Sec. 4.2, Fig. 7): slide a grey square over the image and watch the
layer-5 map and the classifier.

For every occluder position one forward pass gives (a) the total activation of one feature map
(default: the map with the largest total activation in the unoccluded image; a single-maximum
criterion ties on saturated units such as ReLU6's 6), (b) the probability of the correct class, (c) the most probable label
and the probabilities of all classes (so any class's map comes without recomputing).

Conventions (departures from / details the paper leaves open):

* The occluder is a ``window x window`` square filled with ``fill`` in the *normalized* space;
  ``fill=0`` is the training mean (the paper's grey square).
* Positions (top-left corners) are ``0, stride, 2*stride, ...`` up to ``H - window``, plus one
  last position flush with the bottom/right border when the grid does not reach it, so every
  pixel is covered and no occluder sticks out of the image. ``stride > window`` is an error
  (pixels between occluders would never be occluded).
* Image-sized heatmaps average, for each pixel, the values of all occluders that cover it. The
  label map gives each pixel the label of the occluder whose centre is nearest.

Speed. ``incremental=True`` (the default, :class:`~convlens.model.ConvNet` only) reuses the
unoccluded image's activations as in Krypton (Nakandala et al., SIGMOD 2019): an occluder changes
only a box of each stage (growing with the conv/pool kernel, stride and padding; ReLU and
cross-channel LRN keep it), so each stage recomputes just that box, batched over occluders (one
common box size per stage, shifted inside the map at borders; recomputing a few unchanged
positions reproduces them), cut from the clean activations with the previous stage's patch pasted
in. At the flatten stage the patches are pasted into full vectors for the fc head. Equal to the
plain forward to float tolerance (tests compare in float64). Any other model (e.g. torchvision's
mobilenet_v2) gets plain batched forwards of the occluded images.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hooks import record_activations
from .model import ConvNet

__all__ = ["OcclusionMap", "occluded_images", "occluder_positions", "occlusion_map"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OcclusionMap:
    """Result of :func:`occlusion_map`. Grids are indexed by occluder row/column ``(gy, gx)``.

    Attributes:
        positions: (gy, gx, 2) long, top-left ``(y, x)`` of each occluder.
        feature_activity: (gy, gx) total activation of map ``channel`` of ``layer``.
        target_prob: (gy, gx) probability of class ``target``.
        top_label: (gy, gx) long, most probable class.
        probs: (gy, gx, num_classes) all class probabilities.
        activity_heatmap, prob_heatmap: (H, W) per-pixel mean over the occluders covering it.
        label_heatmap: (H, W) long, label of the occluder whose centre is nearest.
        clean_activity, clean_probs: the unoccluded image's values (scalar, (num_classes,)).
    """

    positions: Tensor
    feature_activity: Tensor
    target_prob: Tensor
    top_label: Tensor
    probs: Tensor
    activity_heatmap: Tensor
    prob_heatmap: Tensor
    label_heatmap: Tensor
    clean_activity: Tensor
    clean_probs: Tensor
    layer: str
    channel: int
    target: int
    window: int
    stride: int
    fill: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (the per-class probability cube is left out)."""
        return {
            "layer": self.layer, "channel": self.channel, "target": self.target,
            "window": self.window, "stride": self.stride, "fill": self.fill,
            "grid": list(self.target_prob.shape),
            "positions": self.positions.tolist(),
            "feature_activity": self.feature_activity.tolist(),
            "target_prob": self.target_prob.tolist(),
            "top_label": self.top_label.tolist(),
            "clean_activity": float(self.clean_activity),
            "clean_target_prob": float(self.clean_probs[self.target]),
            "clean_top_label": int(self.clean_probs.argmax()),
        }


def occluder_positions(size: int, window: int, stride: int) -> list[int]:
    """Top-left coordinates along one axis: 0, stride, ... <= size - window, then flush with the end."""
    pos = list(range(0, size - window + 1, stride))
    if pos[-1] != size - window:
        pos.append(size - window)
    return pos


def _validate(image: Tensor, window: int, stride: int) -> Tensor:
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must have shape (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    H, W = image.shape[-2:]
    if window <= 0 or stride <= 0:
        raise ValueError(f"occlusion window and stride must be positive, got window={window}, stride={stride}")
    if window > min(H, W):
        raise ValueError(f"occlusion window ({window}) is larger than the image ({H}x{W}); use --window <= {min(H, W)}")
    if stride > window:
        raise ValueError(f"occlusion stride ({stride}) exceeds window ({window}): some pixels would never be occluded")
    return image


def occluded_images(image: Tensor, ys: Tensor, xs: Tensor, window: int, fill: float | Tensor) -> Tensor:
    """(B, 3, H, W) copies of ``image`` (1, 3, H, W) with a square at each ``(ys[b], xs[b])``."""
    H, W = image.shape[-2:]
    ar_y = torch.arange(H, device=image.device)
    ar_x = torch.arange(W, device=image.device)
    in_y = (ar_y[None] >= ys[:, None]) & (ar_y[None] < ys[:, None] + window)  # (B, H)
    in_x = (ar_x[None] >= xs[:, None]) & (ar_x[None] < xs[:, None] + window)  # (B, W)
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # (B, 1, H, W)
    fill_t = torch.as_tensor(fill, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
    return torch.where(mask, fill_t, image)


def occlusion_map(
    model: nn.Module,
    image: Tensor,
    *,
    window: int,
    stride: int,
    fill: float = 0.0,
    target: int | None = None,
    layer: str | None = None,
    channel: int | None = None,
    batch_size: int = 64,
    incremental: bool = True,
) -> OcclusionMap:
    """Occlusion sensitivity maps of one image (Fig. 7 b, d, e).

    Args:
        model: a :class:`ConvNet` (incremental path) or any classifier returning logits.
        image: (3, H, W) or (1, 3, H, W) normalized image.
        window, stride: occluder side and step in pixels (see the module docstring for borders).
        fill: occluder value in normalized space (0 = the training mean, the paper's grey).
        target: the correct class (default: the class predicted for the unoccluded image).
        layer: feature-map layer for panel (b) (default ``conv5`` for a ConvNet, else the last
            module of ``model.features``); ``channel``: its map (default: largest total activation).
        batch_size: occluded images per forward.
        incremental: reuse the clean activations (ConvNet only; ignored otherwise).

    Returns:
        :class:`OcclusionMap`.

    Raises:
        ValueError: bad window/stride, unknown layer, target/channel out of range.

    Example:
        >>> model = build_model("zfnet-tiny", seed=0).eval()
        >>> occ = occlusion_map(model, torch.randn(3, 32, 32), window=8, stride=4)
        >>> occ.target_prob.shape
        torch.Size([7, 7])
    """
    image = _validate(image, window, stride)
    layer = layer or _default_layer(model)
    if isinstance(model, ConvNet):
        model.resolve(layer)  # raises ValueError for unknown layers
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _occlusion(model, image, window, stride, fill, target, layer, channel, batch_size, incremental)
    finally:
        model.train(was_training)


def _default_layer(model: nn.Module) -> str:
    if isinstance(model, ConvNet):
        return "conv5" if "relu5" in model.stage_names else model.layer_names[-1]
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential) and len(feats):
        return f"features.{len(feats) - 1}"
    raise ValueError("layer must be given for this model (a dotted module name with a (B, C, h, w) output)")


def _forward(model: nn.Module, x: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """(logits, activation of ``layer``) for a batch."""
    if isinstance(model, ConvNet):
        out = model.features(x, [layer, "fc8"])
        return out["fc8"], out[layer]
    with record_activations(model, [layer]) as acts:
        logits = model(x)
    return logits, acts[layer]


def _map_total(act: Tensor, channel: int) -> Tensor:
    a = act[:, channel]
    return a.reshape(a.shape[0], -1).sum(1)


def _occlusion(model: nn.Module, image: Tensor, window: int, stride: int, fill: float, target: int | None,
               layer: str, channel: int | None, batch_size: int, incremental: bool) -> OcclusionMap:
    H, W = image.shape[-2:]
    logits0, act0 = _forward(model, image, layer)
    probs0 = logits0.softmax(1)[0]
    num_classes = probs0.numel()
    if channel is None:
        channel = int(_map_total(act0[0][:, None], 0).argmax())  # largest total activation
    if target is None:
        target = int(probs0.argmax())
    if not 0 <= channel < act0.shape[1]:
        raise ValueError(f"channel {channel} out of range for {layer} ({act0.shape[1]} maps)")
    if not 0 <= target < num_classes:
        raise ValueError(f"target class {target} out of range (model has {num_classes} classes)")
    py, px = occluder_positions(H, window, stride), occluder_positions(W, window, stride)
    grid = torch.tensor([[y, x] for y in py for x in px], device=image.device)  # (G, 2)
    head = None
    batches = [torch.arange(i, min(i + max(1, batch_size), len(grid))) for i in range(0, len(grid), max(1, batch_size))]
    if isinstance(model, ConvNet) and incremental:
        inc = _Incremental(model, image, layer, channel, fill, window)
        run, head = inc.run, model.forward_head
        batches = inc.batches(grid, max(1, batch_size))
    else:
        def run(ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
            x = occluded_images(image, ys, xs, window, fill)
            if not isinstance(model, ConvNet):
                x = x.contiguous(memory_format=torch.channels_last)
            logits, act = _forward(model, x, layer)
            return logits, _map_total(act, channel)
    logits, activity = [], []
    for idx in batches:
        lg, ac = run(grid[idx, 0], grid[idx, 1])
        logits.append(lg)
        activity.append(ac)
    if head is not None:  # fc head on many full vectors at once: fewer passes over the fc weights
        flat = torch.cat(logits)
        logits = [head(flat[i:i + 256]) for i in range(0, len(flat), 256)]
    order = torch.cat(batches).argsort().to(image.device)  # back to grid (row-major) order
    probs = torch.cat(logits)[order].softmax(1).reshape(len(py), len(px), num_classes)
    act_grid = torch.cat(activity)[order].reshape(len(py), len(px))
    ys, xs = torch.tensor(py, device=image.device), torch.tensor(px, device=image.device)
    return OcclusionMap(
        positions=grid.reshape(len(py), len(px), 2),
        feature_activity=act_grid,
        target_prob=probs[..., target],
        top_label=probs.argmax(-1),
        probs=probs,
        activity_heatmap=_upsample_mean(act_grid, ys, xs, window, H, W),
        prob_heatmap=_upsample_mean(probs[..., target], ys, xs, window, H, W),
        label_heatmap=_upsample_nearest(probs.argmax(-1), ys, xs, window, H, W),
        clean_activity=_map_total(act0, channel)[0],
        clean_probs=probs0,
        layer=layer, channel=channel, target=target, window=window, stride=stride, fill=float(fill),
    )


def _cover(pos: Tensor, window: int, size: int, dtype: torch.dtype) -> Tensor:
    ar = torch.arange(size, device=pos.device)[:, None]
    return ((ar >= pos[None]) & (ar < pos[None] + window)).to(dtype)  # (size, G)


def _upsample_mean(grid: Tensor, ys: Tensor, xs: Tensor, window: int, H: int, W: int) -> Tensor:
    """(H, W): each pixel's mean over the occluders covering it (separable: rows x columns)."""
    cy, cx = _cover(ys, window, H, grid.dtype), _cover(xs, window, W, grid.dtype)
    total = cy @ grid @ cx.T
    return total / (cy.sum(1)[:, None] * cx.sum(1)[None, :])


def _upsample_nearest(grid: Tensor, ys: Tensor, xs: Tensor, window: int, H: int, W: int) -> Tensor:
    def nearest(pos: Tensor, size: int) -> Tensor:
        centres = pos.double() + (window - 1) / 2
        return (torch.arange(size, device=pos.device).double()[:, None] - centres[None]).abs().argmin(1)
    return grid[nearest(ys, H)[:, None], nearest(xs, W)[None, :]]


# ---------------------------------------------------------------- incremental inference (Krypton)

def _stage_geometry(m: nn.Module) -> tuple[str, int, int, int]:
    """(kind, kernel, stride, padding) of a stage before ``flatten``; kind in conv/pool/point."""
    if isinstance(m, (nn.ReLU, nn.LocalResponseNorm, nn.Dropout, nn.Identity)):
        return "point", 1, 1, 0
    if isinstance(m, nn.Conv2d) and m.dilation == (1, 1) and len(set(m.kernel_size)) == 1 \
            and len(set(m.stride)) == 1 and isinstance(m.padding, tuple) and len(set(m.padding)) == 1:
        return "conv", m.kernel_size[0], m.stride[0], m.padding[0]
    if isinstance(m, nn.MaxPool2d) and m.dilation in (1, (1, 1)):
        k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
        return "pool", k, s, p
    raise NotImplementedError(f"incremental occlusion does not support {m!r}")


def _plan_axis(lo: Tensor, hi: Tensor, n_out: int, k: int, s: int, p: int
               ) -> tuple[Tensor, Tensor, Tensor, int]:
    """Output interval [lo', hi') changed by an input change [lo, hi), and the box computed for it.

    Returns (lo', hi', box_start, box_len): box_len is common to all occluders (the longest
    change), box_start shifts the box inside [0, n_out) at the border.
    """
    lo2 = torch.div(lo + p - k, s, rounding_mode="floor") + 1
    hi2 = -torch.div(-(hi + p), s, rounding_mode="floor")  # ceil((hi + p) / s)
    lo2, hi2 = lo2.clamp(0, n_out), hi2.clamp(0, n_out)
    box = max(1, int((hi2 - lo2).max()))
    return lo2, hi2, lo2.clamp(max=n_out - box), box


class _Incremental:
    """Clean activations of every stage + per-stage box plan; ``run`` evaluates a batch of occluders."""

    def __init__(self, model: ConvNet, image: Tensor, layer: str, channel: int, fill: float, window: int) -> None:
        self.model, self.window, self.channel = model, window, channel
        self.layer_stage = model.resolve(layer)
        self.stages: list[tuple[str, nn.Module, tuple[str, int, int, int]]] = []
        self.clean: list[Tensor] = []  # input of each stage, (H, W, C) channels-last
        x = image
        for name, m in model.stages():
            if name == "flatten":
                break
            self.stages.append((name, m, _stage_geometry(m)))
            self.clean.append(x[0].permute(1, 2, 0).contiguous())
            x = m(x)
        self.final = x[0].permute(1, 2, 0).contiguous()  # (h, w, C) last spatial stage
        self.in_channels = image.shape[1]
        self.fill = torch.as_tensor(fill, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
        self.weights: dict[str, Tensor] = {name: conv.weight.contiguous(memory_format=torch.channels_last)
                                           for name, conv, g in self.stages if isinstance(conv, nn.Conv2d)}
        self.padded: dict[int, Tensor] = {}
        for i, (_, _m, (kind, k, s, _p)) in enumerate(self.stages):
            if kind != "point":
                val = 0.0 if kind == "conv" else -math.inf
                pad = F.pad(self.clean[i].permute(2, 0, 1), (k + s,) * 4, value=val)
                self.padded[i] = pad.permute(1, 2, 0).contiguous()

    def batches(self, grid: Tensor, batch_size: int) -> list[Tensor]:
        """Occluder indices per batch, grouped so that a batch's boxes have similar sizes.

        Near the borders the changed box of the deep layers is clipped and smaller; a batch computes
        its largest box, so mixing border and interior occluders wastes work. Positions along each
        axis are bucketed by their last windowed stage's box length (up to 3 buckets: within 0-1,
        2-3 and 4+ of the longest); zfnet 224, 50px at stride 8: 0.62 instead of 0.72 conv
        GFLOP per occluder, in 9 batches instead of 5.
        """
        keys = []
        for axis in range(2):
            pos = grid[:, axis]
            box = (pos, pos + self.window)
            for i, (_, _, (kind, k, s, p)) in enumerate(self.stages):
                if kind != "point":
                    n_out = (self.clean[i + 1] if i + 1 < len(self.clean) else self.final).shape[axis]
                    box = _plan_axis(box[0], box[1], n_out, k, s, p)[:2]
            length = box[1] - box[0]
            keys.append(torch.div(length.max() - length, 2, rounding_mode="floor").clamp(max=2))
        key = (keys[0] * 3 + keys[1]).cpu()
        out = []
        for g in key.unique():
            members = (key == g).nonzero()[:, 0]
            out += list(members.split(batch_size))
        return out

    def run(self, ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
        """(flattened features (B, F), map activity (B,)) for occluders at (ys, xs)."""
        B = len(ys)
        patch = self.fill.expand(B, self.in_channels, self.window, self.window)  # (B, C, L, L) changed box
        box = [(ys, ys + self.window, ys, self.window), (xs, xs + self.window, xs, self.window)]
        activity = None
        for i, (name, m, (kind, k, s, p)) in enumerate(self.stages):
            if kind == "point":
                patch = _apply_point(m, patch, inplace=i > 0)
            else:
                patch, box = self._window_stage(i, m, kind, k, s, p, patch, box)
            if name == self.layer_stage:
                activity = self._activity(i, patch, box)
        h, w = self.final.shape[:2]
        full = _gather(self.final, patch, box, [torch.zeros_like(ys)] * 2, (h, w))
        assert activity is not None
        return full.reshape(B, -1), activity  # NCHW flatten order, for model.forward_head

    def _window_stage(self, i: int, m: nn.Module, kind: str, k: int, s: int, p: int, patch: Tensor,
                      box: list[tuple[Tensor, Tensor, Tensor, int]]) -> tuple[Tensor, list]:
        n_out = (self.clean[i + 1] if i + 1 < len(self.clean) else self.final).shape[:2]
        new_box = [_plan_axis(box[a][0], box[a][1], n_out[a], k, s, p) for a in range(2)]
        need_start = [b[2] * s - p for b in new_box]  # input rows/cols the new box reads
        need_len = ((new_box[0][3] - 1) * s + k, (new_box[1][3] - 1) * s + k)
        x = _gather(self.padded[i], patch, box, need_start, need_len, offset=k + s)  # channels_last
        if isinstance(m, nn.Conv2d):
            out = F.conv2d(x, self.weights[self.stages[i][0]], m.bias, s, 0, 1, m.groups)
        else:
            out = F.max_pool2d(x, k, s)  # -inf padding stands for the pool's border / ceil mode
        return out, new_box

    def _activity(self, i: int, patch: Tensor, box: list) -> Tensor:
        out_clean = self.clean[i + 1] if i + 1 < len(self.clean) else self.final  # (h, w, C)
        c = self.channel
        total = out_clean[..., c].sum()
        (_, _, sy, ly), (_, _, sx, lx) = box
        iy = sy[:, None] + torch.arange(ly, device=sy.device)
        ix = sx[:, None] + torch.arange(lx, device=sx.device)
        old = out_clean[..., c][iy[:, :, None], ix[:, None, :]].sum((1, 2))
        return total - old + patch[:, c].sum((1, 2))


def _apply_point(m: nn.Module, x: Tensor, inplace: bool) -> Tensor:
    if isinstance(m, nn.ReLU):
        return F.relu(x, inplace=inplace)  # patches are our own tensors (not the fill)
    if isinstance(m, nn.LocalResponseNorm):
        return _lrn(x, m.size, m.alpha, m.beta, m.k)
    return x  # Dropout (eval) / Identity


def _lrn(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """``F.local_response_norm`` via a channel cumsum (fast on channels-last tensors)."""
    sq = F.pad((x * x).permute(0, 2, 3, 1), (size // 2 + 1, (size - 1) // 2))  # (B, h, w, C + size)
    cs = sq.cumsum(-1)
    win = (cs[..., size:] - cs[..., :-size]).permute(0, 3, 1, 2)  # (B, C, h, w)
    return x / (win * (alpha / size) + k).pow(beta)


def _gather(clean_hwc: Tensor, patch: Tensor, box: list, need_start: list[Tensor],
            need_len: tuple[int, int], offset: int = 0) -> Tensor:
    """(B, C, Ny, Nx) channels-last: clean activations at [need_start, +need_len) per occluder,
    with each occluder's ``patch`` (covering box[axis][2] .. + box[axis][3]) pasted in.
    ``clean_hwc`` is (h, w, C) contiguous, padded by ``offset`` on each side.

    A few whole-batch ops (gather, gather, where), not per-occluder copies: on a busy machine
    every multi-threaded op pays a scheduling cost, so the op count matters more than bytes.
    """
    idx, rel, valid = [], [], []
    for axis in range(2):
        a = need_start[axis][:, None] + torch.arange(need_len[axis], device=patch.device)  # (B, N)
        r = a - box[axis][2][:, None]
        idx.append(a + offset)
        valid.append((r >= 0) & (r < box[axis][3]))
        rel.append(r.clamp(0, box[axis][3] - 1))
    clean = clean_hwc[idx[0][:, :, None], idx[1][:, None, :]]  # (B, Ny, Nx, C)
    b = torch.arange(patch.shape[0], device=patch.device)[:, None, None]
    new = patch.permute(0, 2, 3, 1)[b, rel[0][:, :, None], rel[1][:, None, :]]
    mask = (valid[0][:, :, None] & valid[1][:, None, :])[..., None]
    return torch.where(mask, new, clean).permute(0, 3, 1, 2)
