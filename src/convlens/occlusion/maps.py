"""Occlusion sensitivity (Sec. 4.2, Fig. 7): slide a grey square over the image and watch the
layer-5 map and the classifier.

For every occluder position one forward pass gives (a) the total activation of one feature map
(default: the map with the largest total activation in the unoccluded image; a single-maximum
criterion ties on saturated units such as ReLU6's 6), (b) the probability of the correct class,
(c) the most probable label
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

Speed. ``incremental=True`` (the default, :class:`~convlens.nets.convnet.ConvNet` only) reuses the
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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from convlens.nets.convnet import ConvNet
from convlens.occlusion.approx import Approximation, drill_down, map_quality, upsample_mean
from convlens.occlusion.engine import Engine, map_total, occluded_images

__all__ = ["Approximation", "OcclusionMap", "occluded_images", "occluder_positions", "occlusion_map"]

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
    method: str = "incremental"
    quality: dict[str, float] | None = None

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
            "method": self.method, "quality": self.quality,
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
    batch_size: int | None = None,
    incremental: bool = True,
    approximate: bool | Approximation = False,
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
        batch_size: occluders per batch (default: measured per path: 64 for a ConvNet, 32 on the
            generic incremental path, 8 for plain forwards).
        incremental: reuse the clean activations (exact; any model ``torch.fx`` can trace, else
            plain batched forwards). ``False``: plain batched forwards.
        approximate: off by default. ``True`` (or an :class:`Approximation` with its settings)
            trades accuracy for speed: projective-field thresholding and adaptive drill-down
            (see :mod:`convlens.occlusion.approx`); ``Approximation(quality=True)`` also computes
            the exact map and reports SSIM etc. in ``result.quality``.

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
    approx = (Approximation() if approximate is True else approximate) or None
    modes = {m: m.training for m in model.modules()}
    inplace: list[Any] = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    try:
        model.eval()
        for m in inplace:  # cached clean activations must not be overwritten
            m.inplace = False
        with torch.inference_mode():
            return _occlusion(model, image, window, stride, fill, target, layer, channel, batch_size, incremental,
                              approx)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m in inplace:
            m.inplace = True


def _default_layer(model: nn.Module) -> str:
    if isinstance(model, ConvNet):
        return "conv5" if "relu5" in model.stage_names else model.layer_names[-1]
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential) and len(feats):
        return f"features.{len(feats) - 1}"
    raise ValueError("layer must be given for this model (a dotted module name with a (B, C, h, w) output)")


def _occlusion(model: nn.Module, image: Tensor, window: int, stride: int, fill: float, target: int | None,
               layer: str, channel: int | None, batch_size: int | None, incremental: bool,
               approx: Approximation | None) -> OcclusionMap:
    H, W = image.shape[-2:]
    threshold = approx.threshold if approx is not None else None
    engine = Engine(model, image, layer, fill, window, batch_size, incremental, threshold)
    logits0, act0 = engine.logits0, engine.act0
    probs0 = logits0.softmax(1)[0]
    num_classes = probs0.numel()
    if channel is None:
        channel = int(map_total(act0[0][:, None], 0).argmax())  # largest total activation
    if target is None:
        target = int(probs0.argmax())
    if not 0 <= channel < act0.shape[1]:
        raise ValueError(f"channel {channel} out of range for {layer} ({act0.shape[1]} maps)")
    if not 0 <= target < num_classes:
        raise ValueError(f"target class {target} out of range (model has {num_classes} classes)")
    py, px = occluder_positions(H, window, stride), occluder_positions(W, window, stride)
    grid = torch.tensor([[y, x] for y in py for x in px], device=image.device)  # (G, 2)
    ys, xs = torch.tensor(py, device=image.device), torch.tensor(px, device=image.device)
    quality = None
    if approx is None:
        logits, activity = engine.evaluate(grid, channel)
        probs = logits.softmax(1).reshape(len(py), len(px), num_classes)
        act_grid = activity.reshape(len(py), len(px))
    else:
        probs, act_grid, computed = drill_down(engine, grid, (len(py), len(px)), channel, target, approx,
                                               probs0[target])
        quality = {"computed_fraction": computed}
        if approx.quality:
            exact = Engine(model, image, layer, fill, window, batch_size, incremental)
            logits, activity = exact.evaluate(grid, channel)
            quality.update(map_quality(logits.softmax(1).reshape(probs.shape), activity.reshape(act_grid.shape),
                                       probs, act_grid, target, ys, xs, window, H, W))
    return OcclusionMap(
        positions=grid.reshape(len(py), len(px), 2),
        feature_activity=act_grid,
        target_prob=probs[..., target],
        top_label=probs.argmax(-1),
        probs=probs,
        activity_heatmap=upsample_mean(act_grid, ys, xs, window, H, W),
        prob_heatmap=upsample_mean(probs[..., target], ys, xs, window, H, W),
        label_heatmap=_upsample_nearest(probs.argmax(-1), ys, xs, window, H, W),
        clean_activity=map_total(act0, channel)[0],
        clean_probs=probs0,
        layer=layer, channel=channel, target=target, window=window, stride=stride, fill=float(fill),
        method=engine.method + (" approximate" if approx is not None else ""), quality=quality,
    )


def _upsample_nearest(grid: Tensor, ys: Tensor, xs: Tensor, window: int, H: int, W: int) -> Tensor:
    def nearest(pos: Tensor, size: int) -> Tensor:
        centres = pos.double() + (window - 1) / 2
        return (torch.arange(size, device=pos.device).double()[:, None] - centres[None]).abs().argmin(1)
    return grid[nearest(ys, H)[:, None], nearest(xs, W)[None, :]]
