"""Tensors -> displayable images: the paper's per-projection contrast normalization, grids,
heatmap overlays and colormaps (rendering for Sec. 2.1 / Figs. 2, 4, 7).

All functions take float tensors (any device; results are on the input's device except
:func:`to_uint8`, which returns a numpy array) and never modify their inputs. Images are
``(3, H, W)`` (or batches ``(..., 3, H, W)``) with values in ``[0, 1]`` unless stated.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "colorize",
    "crop_box",
    "fit_text",
    "hstack",
    "make_grid",
    "normalize_for_display",
    "overlay_heatmap",
    "pad_to",
    "resize_tile",
    "text_block",
    "to_uint8",
    "upscale_nearest",
    "vstack",
]


def normalize_for_display(t: torch.Tensor, *, eps: float = 1e-12, percentile: float | None = None) -> torch.Tensor:
    """Per-projection contrast normalization, the paper's way of showing a projection.

    Each image (the last three dims) independently: center on 0 (subtract its mean), scale so
    the largest absolute value maps to 0.5, add 0.5. An all-constant image becomes flat grey 0.5.

    Args:
        t: (..., C, H, W) projections in input space (any range).
        percentile: scale at this percentile of |value| (e.g. 99.5) instead of the maximum, clipping
            the few larger values: sparse maps (guided backprop) stay visible in small tiles.

    Returns:
        Tensor of the same shape with values in [0, 1].

    Example:
        >>> proj = project_max(model, images, "conv5", [42]).images   # (N, 1, 3, H, W)
        >>> shown = normalize_for_display(proj)
    """
    if t.dim() < 3:
        raise ValueError(f"t must have shape (..., C, H, W), got {tuple(t.shape)}")
    t = t.detach().float()
    centered = t - t.mean(dim=(-3, -2, -1), keepdim=True)
    if percentile is None:
        scale = centered.abs().amax(dim=(-3, -2, -1), keepdim=True).clamp_min(eps)
    else:
        mag = centered.abs().flatten(-3).sort(dim=-1).values
        i = min(mag.shape[-1] - 1, max(0, round(percentile / 100 * (mag.shape[-1] - 1))))
        scale = mag[..., i][..., None, None, None].clamp_min(eps)
    return (centered / scale * 0.5 + 0.5).clamp(0.0, 1.0)


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile (N, C, H, W) images into one (C, H', W') image, ``nrow`` images per row.

    Args:
        images: (N, C, H, W) images in [0, 1] (a list of equal-size (C, H, W) tensors works too).
        nrow: images per row.
        pad: pixels of border between and around images.
        pad_value: border value (1.0 = white, as in the paper's figures).

    Returns:
        (C, rows*(H+pad)+pad, ncol*(W+pad)+pad) tensor.

    Example:
        >>> grid = make_grid(normalize_for_display(proj.images[0]), nrow=3)
    """
    if isinstance(images, (list, tuple)):
        images = torch.stack(list(images))
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if nrow < 1 or pad < 0:
        raise ValueError(f"nrow must be >= 1 and pad >= 0, got nrow={nrow}, pad={pad}")
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    grid = images.new_full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), float(pad_value))
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


def colorize(
    heat: torch.Tensor, cmap: str = "jet", *, vmin: float | None = None, vmax: float | None = None
) -> torch.Tensor:
    """Map a (H, W) heat map to a (3, H, W) RGB image in [0, 1] with a matplotlib colormap.

    Values are scaled linearly from [vmin, vmax] (default: the map's min and max) to [0, 1].
    """
    if heat.dim() != 2:
        raise ValueError(f"heat must have shape (H, W), got {tuple(heat.shape)}")
    from matplotlib import colormaps  # lazy: matplotlib import is slow

    h = heat.detach().double().cpu()
    lo = float(h.min()) if vmin is None else vmin
    hi = float(h.max()) if vmax is None else vmax
    scaled = ((h - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy()
    rgb = colormaps[cmap](scaled)[..., :3]  # (H, W, 3) float64
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().to(heat.device)


def overlay_heatmap(image01: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5, cmap: str = "jet", *,
                    vmin: float | None = None, vmax: float | None = None) -> torch.Tensor:
    """Blend a colorized heat map over an image: ``(1 - alpha) * image + alpha * colorize(heat)``.

    Args:
        image01: (3, H, W) image in [0, 1].
        heat: (h, w) map, upsampled bilinearly to (H, W) (e.g. an occlusion map).
        alpha: weight of the heat map.
        vmin, vmax: the values at the colormap's ends (default: the upsampled map's min and max).

    Returns:
        (3, H, W) tensor in [0, 1].
    """
    if image01.dim() != 3 or heat.dim() != 2:
        raise ValueError(
            f"expected image01 (3, H, W) and heat (h, w), got {tuple(image01.shape)} and {tuple(heat.shape)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    H, W = image01.shape[-2:]
    up = F.interpolate(heat.detach().double()[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    color = colorize(up, cmap, vmin=vmin, vmax=vmax).to(image01.device, image01.dtype)
    return ((1 - alpha) * image01.detach() + alpha * color).clamp(0, 1)


def upscale_nearest(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Enlarge (..., H, W) by an integer factor with nearest-neighbour (each pixel a block)."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    factor = int(factor)
    return img.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def crop_box(img: torch.Tensor, box: tuple[int, int, int, int] | torch.Tensor) -> torch.Tensor:
    """(..., H, W)[..., y0:y1, x0:x1] for a half-open box ``(y0, x0, y1, x1)`` (e.g. a unit's RF)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    return img[..., y0:y1, x0:x1]


def pad_to(img: torch.Tensor, h: int, w: int, value: float = 1.0) -> torch.Tensor:
    """Center (C, h0, w0) on a (C, h, w) canvas of ``value`` (e.g. RF crops clipped at the border)."""
    c, h0, w0 = img.shape
    if h0 > h or w0 > w:
        raise ValueError(f"image ({h0}x{w0}) is larger than the target ({h}x{w})")
    out = img.new_full((c, h, w), float(value))
    y, x = (h - h0) // 2, (w - w0) // 2
    out[:, y : y + h0, x : x + w0] = img
    return out


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (H, W) float in [0, 1] -> HWC (or HW) uint8 numpy array (values clamped)."""
    if img.dim() not in (2, 3):
        raise ValueError(f"img must have shape (3, H, W) or (H, W), got {tuple(img.shape)}")
    arr = (img.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    if arr.dim() == 3:
        arr = arr.permute(1, 2, 0)
    return np.ascontiguousarray(arr.numpy())


# ----------------------------------------------------------------------------- labels (text drawn with PIL)

def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable font
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default()


def fit_text(text: str, width: int, size: int = 11) -> str:
    """``text`` shortened with an ellipsis so that it fits ``width`` pixels at font ``size``."""
    font = _font(size)
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "\u2026") > width:
        text = text[:-1]
    return text + "\u2026" if text else ""


def _wrap(line: str, width: int, size: int) -> list[str]:
    font, out, cur = _font(size), [], ""
    for word in line.split(" "):
        if cur and font.getlength(f"{cur} {word}") > width:
            out.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    return [*out, cur]


def text_block(lines: Sequence[str], width: int, *, size: int = 11, pad: int = 2, bold: bool = False,
               wrap: bool = False) -> torch.Tensor:
    """A white (3, h, width) image with ``lines`` of black text, each cut to fit ``width``
    (``wrap``: broken at spaces onto further lines instead).

    Example:
        >>> title = text_block(["features.3 map 7", "rule: guided"], 300)
        >>> figure = vstack([title, grid])
    """
    from PIL import Image, ImageDraw

    font = _font(size)
    if wrap:
        lines = [part for line in lines for part in _wrap(str(line), width - 2 * pad, size)]
    line_h = size + 3
    h = pad * 2 + line_h * max(1, len(lines))
    img = Image.new("RGB", (max(1, width), h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        text = fit_text(str(line), width - 2 * pad, size)
        xy = (pad, pad + i * line_h)
        draw.text(xy, text, fill=(0, 0, 0), font=font)
        if bold:
            draw.text((xy[0] + 1, xy[1]), text, fill=(0, 0, 0), font=font)
    arr = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
    return arr


def vstack(images: Sequence[torch.Tensor], *, pad: int = 0, value: float = 1.0) -> torch.Tensor:
    """Stack (3, h_i, w_i) images top to bottom, left-aligned on a ``value`` background."""
    w = max(im.shape[-1] for im in images)
    h = sum(im.shape[-2] for im in images) + pad * (len(images) - 1)
    out = images[0].new_full((3, h, w), float(value))
    y = 0
    for im in images:
        out[:, y:y + im.shape[-2], :im.shape[-1]] = im
        y += im.shape[-2] + pad
    return out


def hstack(images: Sequence[torch.Tensor], *, pad: int = 0, value: float = 1.0) -> torch.Tensor:
    """Place (3, h_i, w_i) images left to right, top-aligned on a ``value`` background."""
    h = max(im.shape[-2] for im in images)
    w = sum(im.shape[-1] for im in images) + pad * (len(images) - 1)
    out = images[0].new_full((3, h, w), float(value))
    x = 0
    for im in images:
        out[:, :im.shape[-2], x:x + im.shape[-1]] = im
        x += im.shape[-1] + pad
    return out


def resize_tile(img: torch.Tensor, side: int) -> torch.Tensor:
    """(..., 3, S, S) -> (..., 3, side, side): nearest-neighbour up (pixels stay visible), area down."""
    s = img.shape[-1]
    if s == side:
        return img
    flat = img.reshape(-1, *img.shape[-3:]).float()
    if side % s == 0:
        out = upscale_nearest(flat, side // s)
    elif s < side:
        out = F.interpolate(flat, size=(side, side), mode="nearest")
    else:
        out = F.interpolate(flat, size=(side, side), mode="area")
    return out.reshape(*img.shape[:-2], side, side)
