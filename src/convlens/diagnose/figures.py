"""Figures of an architecture diagnosis (Fig. 6): layer-1 filter grids (each contrast-normalized, and
on one shared scale) and the layer-2 projections whose grid energy measures aliasing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["diagnosis_figures"]


def diagnosis_figures(d: Any, tag: str, out: Path) -> list[dict[str, str]]:
    """Write ``<tag>_conv1_filters.png``, ``<tag>_conv1_filters_shared.png``, ``<tag>_layer2_projections.png``
    into ``out``; return their ``result.json`` figure entries."""
    from convlens.io.artifacts import save_png
    from convlens.io.viz import make_grid, normalize_for_display, upscale_nearest

    w = d.filters  # (C, 3, k, k)
    factor = max(1, 48 // w.shape[-1])
    each = upscale_nearest(make_grid(normalize_for_display(w), nrow=16, pad=1), factor)
    shared = (w / (2 * w.abs().max().clamp_min(1e-12)) + 0.5).clamp(0, 1)  # one scale for every filter
    shared = upscale_nearest(make_grid(shared, nrow=16, pad=1), factor)
    proj = make_grid(normalize_for_display(d.projections), nrow=8, pad=2)
    proj = upscale_nearest(proj, max(1, 640 // max(proj.shape[-2:])))
    figs = []
    for name, img, caption in (
        ("conv1_filters", each, f"{d.name}: layer-1 filters ({d.layer_names[0]}), each contrast-normalized"),
        ("conv1_filters_shared", shared, f"{d.name}: layer-1 filters on one shared scale; dominance "
                                         f"{d.dominance:.2f} (filter {d.dominant_filter})"),
        ("layer2_projections", proj, f"{d.name}: deconvnet projections of layer-2 channels "
                                     f"({d.layer_names[1]}, strongest image each); "
                                     f"grid energy {float(d.aliasing.nanmean()):.4f}"),
    ):
        save_png(img, out / f"{tag}_{name}.png")
        figs.append({"path": f"{tag}_{name}.png", "caption": caption, "group": tag})
    return figs
