"""How a projection is shown, everywhere (Sec. 2.1, Fig. 2): cropped to where it is, beside the image
patch of the same box, with a robust contrast and smooth resampling.

One presentation for the CLI's PNGs, the mined tiles and Fig. 2 sheets, the report, the explorer and
its uploads, so that a projection looks the same wherever a person meets it:

* **Where it is.** The *mass box* is the smallest box (by area) holding at least ``share`` (default
  80%, :data:`SHARE`) of the projection's absolute mass (``sum over channels of |value|``) inside the unit's
  receptive field. The *display box* is that box plus a margin, grown to a minimum side and towards
  a square, clipped to the receptive field and the image. The image patch is cut from the same box
  (the paper's Fig. 2 pairing). Boxes are half-open ``(y0, x0, y1, x1)`` in image pixels.
* **Contrast.** One rule (:data:`CONTRAST`): value 0 is grey, and the 99th percentile of |value|
  inside the display box maps to black/white (larger values are clipped), so one outlier pixel does
  not set the scale. The paper scales each projection by its own maximum instead.
* **Resampling.** The crop is resampled to the displayed size with antialiased bilinear
  interpolation, never nearest neighbour; the full-resolution crop of the receptive field is kept
  (same contrast) for a click-through.

Why 80% and the 99th percentile: on the ImageNet MobileNetV2's ``features.16`` (guided backprop),
95% of a projection's mass is spread over nearly the whole 224 px field (a faint texture around
the eyes and nose that carry the signal), so a 95% box crops nothing; 80% finds the object part.

Large fields are searched for the mass box on a grid of at most :data:`SEARCH_SIDE` cells per side
(sum-pooled), so the box holds the share exactly but is minimal only to that grid.

Tensors in, tensors out: no file I/O.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["CONTRAST", "SHARE", "ProjectionView", "contrast_scale", "display_box", "mass_box", "present", "render",
           "resample", "shade"]

PERCENTILE = 99.0
SHARE = 0.8
CONTRAST = f"contrast: ±p{PERCENTILE:g} |value| in the shown box, grey = 0"
SEARCH_SIDE = 64
Box = tuple[int, int, int, int]


def _as_box(box: Any, h: int, w: int) -> Box:
    if box is None:
        return (0, 0, h, w)
    y0, x0, y1, x1 = (int(v) for v in box)
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"box must be a non-empty (y0, x0, y1, x1) inside the {h}x{w} image, got {tuple(box)}")
    return (y0, x0, y1, x1)


def _min_box_grid(mass: torch.Tensor, share: float) -> Box:
    """Smallest-area box of a (h, w) non-negative grid holding >= ``share`` of its sum (exact)."""
    h, w = mass.shape
    s = F.pad(mass.double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # (h+1, w+1) integral image
    target = share * float(s[-1, -1]) * (1 - 1e-12)
    y0, y1 = torch.triu_indices(h + 1, h + 1, offset=1)  # every row band y0 < y1
    band = s[y1] - s[y0]  # (P, w+1) cumulative mass over columns, non-decreasing
    x1 = torch.searchsorted(band.contiguous(), (band + target).contiguous())  # narrowest x1 per x0
    area = (y1 - y0)[:, None] * (x1 - torch.arange(w + 1))[None]
    area = torch.where(x1 <= w, area, torch.iinfo(torch.long).max)
    best = int(area.argmin())
    p, x0 = divmod(best, w + 1)
    return (int(y0[p]), x0, int(y1[p]), int(x1[p, x0]))


def mass_box(projection: torch.Tensor, *, share: float = SHARE, within: Any = None) -> Box:
    """The smallest box holding at least ``share`` of the projection's absolute mass.

    Args:
        projection: (C, H, W) projection in input space (any sign).
        share: fraction of ``sum over channels of |value|`` the box must hold, in (0, 1].
        within: ``(y0, x0, y1, x1)`` to search inside (e.g. the unit's receptive field); default the image.

    Returns:
        ``(y0, x0, y1, x1)`` half-open, inside ``within``; ``within`` itself for an all-zero projection.

    Example:
        >>> mass_box(torch.zeros(3, 8, 8).index_put_((torch.tensor([0]), torch.tensor([2]), torch.tensor([5])),
        ...          torch.tensor([1.0])))
        (2, 5, 3, 6)
    """
    if projection.dim() != 3:
        raise ValueError(f"projection must have shape (C, H, W), got {tuple(projection.shape)}")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    h, w = projection.shape[-2:]
    by0, bx0, by1, bx1 = _as_box(within, h, w)
    mass = projection.detach()[:, by0:by1, bx0:bx1].double().abs().sum(0).cpu()  # (h', w')
    if not float(mass.sum()) > 0:
        return (by0, bx0, by1, bx1)
    f = max(1, math.ceil(max(mass.shape) / SEARCH_SIDE))
    if f > 1:  # sum-pool: a coarse box covers its fine cells, so it still holds the share
        ph, pw = -mass.shape[0] % f, -mass.shape[1] % f
        mass = F.avg_pool2d(F.pad(mass, (0, pw, 0, ph))[None], f, divisor_override=1)[0]
    y0, x0, y1, x1 = _min_box_grid(mass, share)
    return (by0 + y0 * f, bx0 + x0 * f, min(by1, by0 + y1 * f), min(bx1, bx0 + x1 * f))


def _grow(lo: int, hi: int, side: int, a: int, b: int) -> tuple[int, int]:
    """[lo, hi) grown around its centre to ``side`` (at most b - a), shifted to stay inside [a, b)."""
    side = min(max(side, hi - lo), b - a)
    lo = (lo + hi - side) // 2
    lo = min(max(lo, a), b - side)
    return lo, lo + side


def display_box(box: Sequence[int], within: Sequence[int], *, margin: float = 0.15, min_side: int = 32) -> Box:
    """The box shown: ``box`` plus ``margin`` (a fraction of its longer side) on every side, at least
    ``min_side`` pixels, grown towards a square, all clipped to ``within`` (the receptive field)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    a0, b0, a1, b1 = (int(v) for v in within)
    pad = math.ceil(margin * max(y1 - y0, x1 - x0))
    side = max(min_side, y1 - y0 + 2 * pad, x1 - x0 + 2 * pad)
    y0, y1 = _grow(y0, y1, side, a0, a1)
    x0, x1 = _grow(x0, x1, side, b0, b1)
    return (y0, x0, y1, x1)


def contrast_scale(values: torch.Tensor, percentile: float = PERCENTILE) -> float:
    """The |value| shown as full black/white: the ``percentile`` of |value| over all entries (> 0)."""
    mag = values.detach().double().abs().flatten()
    if mag.numel() == 0:
        return 1e-12
    return max(float(torch.quantile(mag.cpu(), percentile / 100)), float(mag.max()) * 1e-6, 1e-12)


def shade(projection: torch.Tensor, scale: float) -> torch.Tensor:
    """Values -> [0, 1] display: 0 is grey (0.5), ``±scale`` is white/black, beyond is clipped."""
    return (projection.detach().float() / (2 * scale) + 0.5).clamp(0, 1)


def resample(img: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(..., C, h, w) -> (..., C, H, W) with bilinear interpolation, antialiased when shrinking."""
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(img.shape[-2:]) == hw:
        return img
    flat = img.reshape(-1, *img.shape[-3:]).float()
    out = F.interpolate(flat, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp(float(img.min()), float(img.max())).reshape(*img.shape[:-2], *hw)


def _fit(img: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Resample (C, h, w) so the longer side is ``size`` and centre it on a size x size ``fill`` canvas."""
    h, w = img.shape[-2:]
    th, tw = max(1, round(size * h / max(h, w))), max(1, round(size * w / max(h, w)))
    out = img.new_full((img.shape[0], size, size), fill)
    y, x = (size - th) // 2, (size - tw) // 2
    out[:, y:y + th, x:x + tw] = resample(img, (th, tw))
    return out


def render(projection: torch.Tensor, box: Sequence[int], size: int) -> torch.Tensor:
    """(3, H, W) projection -> (3, size, size): the ``box`` crop shaded by :data:`CONTRAST` and resampled
    (a non-square box is centred on grey). For figures that show several projections in one box
    (e.g. a unit across epochs or randomized weights), each with the one contrast rule."""
    y0, x0, y1, x1 = (int(v) for v in box)
    crop = projection.detach().cpu().float()[:, y0:y1, x0:x1]
    return _fit(shade(crop, contrast_scale(crop)), size, 0.5)


@dataclass(frozen=True)
class ProjectionView:
    """A projection as shown (:func:`present`).

    Attributes:
        shown: (3, size, size) the projection in the display box, shaded (:data:`CONTRAST`) and resampled.
        patch: (3, size, size) the image in the same box, resampled the same way.
        full: (3, h, w) the projection in the receptive field at full resolution, same shading.
        full_patch: (3, h, w) the image in the receptive field.
        rf_box, mass_box, display_box: ``(y0, x0, y1, x1)`` half-open, image pixels.
        scale: the |value| shown as full black/white; ``share``: the mass share inside the display box.
    """

    shown: torch.Tensor
    patch: torch.Tensor
    full: torch.Tensor
    full_patch: torch.Tensor
    rf_box: Box
    mass_box: Box
    display_box: Box
    scale: float
    share: float

    def to_dict(self) -> dict[str, Any]:
        """The boxes and numbers (no pixels), for a JSON description of the tile."""
        return {"rf_box": list(self.rf_box), "mass_box": list(self.mass_box), "display_box": list(self.display_box),
                "contrast_scale": self.scale, "display_share": self.share, "contrast": CONTRAST}


def present(projection: torch.Tensor, image01: torch.Tensor | None = None, *, rf_box: Any = None, size: int = 128,
            share: float = SHARE, margin: float = 0.15, min_side: int = 32, fill: float = 1.0) -> ProjectionView:
    """The one presentation of a projection: cropped to its mass, beside the image patch, robust contrast.

    Args:
        projection: (3, H, W) raw projection in input space.
        image01: (3, H, W) the image in [0, 1] (default: a white patch).
        rf_box: the unit's receptive field ``(y0, x0, y1, x1)`` (default the whole image).
        size: side of ``shown`` and ``patch`` in pixels (the size they are displayed at).
        share, margin, min_side: see :func:`mass_box` and :func:`display_box`.
        fill: patch value where a non-square box leaves room on the canvas (projections use grey).

    Returns:
        :class:`ProjectionView`.

    Example:
        >>> proj = project_units(model, x, "features.16", units)           # (1, K, 3, H, W)
        >>> v = present(proj.images[0, 0], denormalize(x[0]), rf_box=proj.boxes[0, 0])
        >>> save_png(hstack([v.shown, v.patch], pad=4), "pair.png")
    """
    if projection.dim() != 3:
        raise ValueError(f"projection must have shape (3, H, W), got {tuple(projection.shape)}")
    if image01 is not None and image01.shape[-2:] != projection.shape[-2:]:
        raise ValueError(f"image01 must match the projection's {tuple(projection.shape[-2:])} pixels, "
                         f"got {tuple(image01.shape)}")
    if size < 1:
        raise ValueError(f"size must be >= 1 pixel, got {size}")
    h, w = projection.shape[-2:]
    rf = _as_box(rf_box, h, w)
    mb = mass_box(projection, share=share, within=rf)
    db = display_box(mb, rf, margin=margin, min_side=min_side)
    proj = projection.detach().cpu().float()
    image = proj.new_ones(proj.shape) * fill if image01 is None else image01.detach().cpu().float().clamp(0, 1)
    crop = proj[:, db[0]:db[2], db[1]:db[3]]
    scale = contrast_scale(crop)
    mass = proj.double().abs().sum(0)
    total = float(mass[rf[0]:rf[2], rf[1]:rf[3]].sum())
    inside = float(mass[db[0]:db[2], db[1]:db[3]].sum())
    return ProjectionView(
        shown=_fit(shade(crop, scale), size, 0.5), patch=_fit(image[:, db[0]:db[2], db[1]:db[3]], size, fill),
        full=shade(proj[:, rf[0]:rf[2], rf[1]:rf[3]], scale), full_patch=image[:, rf[0]:rf[2], rf[1]:rf[3]],
        rf_box=rf, mass_box=mb, display_box=db, scale=scale, share=inside / total if total > 0 else 1.0)
