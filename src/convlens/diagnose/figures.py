"""Figures of an architecture diagnosis (Fig. 6): layer-1 filter grids (each contrast-normalized, and
on one shared scale) and the layer-2 projections whose grid energy measures aliasing, each titled
with its map and activation and shown the one way of :mod:`convlens.deconv.view` (cropped to where
it is, robust contrast, smooth resampling)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["diagnosis_figures"]


def diagnosis_figures(d: Any, tag: str, out: Path) -> list[dict[str, str]]:
    """Write ``<tag>_conv1_filters.png``, ``<tag>_conv1_filters_shared.png``, ``<tag>_layer2_projections.png``
    into ``out``; return their ``result.json`` figure entries."""
    from convlens.deconv.view import CONTRAST
    from convlens.io.artifacts import save_png
    from convlens.io.viz import make_grid, normalize_for_display, upscale_nearest

    w = d.filters  # (C, 3, k, k)
    factor = max(1, 48 // w.shape[-1])
    each = upscale_nearest(make_grid(normalize_for_display(w), nrow=16, pad=1), factor)
    shared = (w / (2 * w.abs().max().clamp_min(1e-12)) + 0.5).clamp(0, 1)  # one scale for every filter
    shared = upscale_nearest(make_grid(shared, nrow=16, pad=1), factor)
    proj = _projection_tiles(d)
    figs = []
    for name, img, caption in (
        ("conv1_filters", each, f"{d.name}: layer-1 filters ({d.layer_names[0]}), each contrast-normalized"),
        ("conv1_filters_shared", shared, f"{d.name}: layer-1 filters on one shared scale; dominance "
                                         f"{d.dominance:.2f} (filter {d.dominant_filter})"),
        ("layer2_projections", proj, f"{d.name}: deconvnet projections of layer-2 maps "
                                     f"({d.layer_names[1]}, strongest image each), titled with map and activation, "
                                     f"each cropped to where it is; {CONTRAST}; "
                                     f"grid energy {float(d.aliasing.nanmean()):.4f}"),
    ):
        save_png(img, out / f"{tag}_{name}.png")
        figs.append({"path": f"{tag}_{name}.png", "caption": caption, "group": tag})
    return figs


def _projection_tiles(d: Any, size: int = 96) -> Any:
    """Layer-2 projections as titled tiles (``<layer> map k`` and its activation) in rows of 8."""
    import torch

    from convlens.deconv.view import present
    from convlens.io.viz import make_grid, text_block, vstack

    values = d.projection_values
    boxes = d.projection_boxes
    tiles = []
    for k, img in enumerate(d.projections):
        view = present(img, rf_box=None if boxes is None else boxes[k], size=size, min_side=8)
        what = "" if values is None else f"act {float(values[k]):.3g}" + (": blank" if float(values[k]) <= 0 else "")
        tiles.append(vstack([text_block([f"map {k}", what], size, size=10, pad=1), view.shown]))
    head = text_block([f"{d.name}: {d.layer_names[1]}, strongest image per map"], 8 * (size + 2), size=12, pad=3)
    return vstack([head, make_grid(torch.stack(tiles), nrow=8, pad=2)])
