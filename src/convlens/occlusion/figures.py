"""Figures and tables of an occlusion analysis (Fig. 7): the five-panel row, panel (c)'s projection,
the most-probable-label table. Numbers come from :func:`convlens.occlusion.maps.occlusion_map`.

Panels (b) and (d) draw image-sized maps: each pixel holds the mean over the occluder positions
covering it (:attr:`~convlens.occlusion.maps.OcclusionMap.prob_heatmap`), a narrower range than the
per-position grid; each colour bar spans exactly the values drawn (:func:`drawn_range`) and says
so. Panel (c) is shaded with the one contrast rule of :mod:`convlens.deconv.view`."""
from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = ["HOW_DRAWN", "class_name", "drawn_range", "label_names", "label_table", "occlusion_projection",
           "render_occlusion"]

HOW_DRAWN = "with the occluder covering this pixel, mean over the occluder positions covering it"

log = logging.getLogger(__name__)


def label_names(labels: torch.Tensor, class_names: list[str]) -> dict[int, str]:
    return {int(c): (class_names[int(c)] if int(c) < len(class_names) else str(int(c))) for c in labels.unique()}


def drawn_range(heat: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a drawn (H, W) map: the ends of its colour bar."""
    return float(heat.min()), float(heat.max())


def render_occlusion(image01: torch.Tensor, occ: Any, projection01: torch.Tensor | None, box: Any,
           class_names: list[str], title: str = "", rule: str = "deconvnet") -> Any:
    """The Fig. 7 row as a matplotlib Figure (panels a-e). ``image01``: (3, H, W) in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    img = image01.permute(1, 2, 0).cpu().numpy()
    H, W = img.shape[:2]
    fig, ax = plt.subplots(1, 5, figsize=(20, 4.6))
    gy, gx = occ.target_prob.shape
    y, x = occ.positions[gy // 2, gx // 2].tolist()
    grey = img.copy()
    grey[y:y + occ.window, x:x + occ.window] = 0.5
    ax[0].imshow(grey)
    ax[0].set_title(f"(a) input, {occ.window}px occluder, stride {occ.stride}")
    target = class_name(occ.target, class_names)
    for a, heat, t, what in (
        (ax[1], occ.activity_heatmap, f"(b) {occ.layer} map {occ.channel}: total activity", "summed activity"),
        (ax[3], occ.prob_heatmap, f"(d) p({target})", f"p({target})"),
    ):
        a.imshow(img)
        lo, hi = drawn_range(heat)
        im = a.imshow(heat.cpu().numpy(), cmap="jet", alpha=0.6, vmin=lo, vmax=hi)
        bar = fig.colorbar(im, ax=a, fraction=0.046, pad=0.02)
        bar.set_label(f"{what} {HOW_DRAWN}".replace(", ", ",\n"), fontsize=7)
        a.set_title(t, fontsize=9)
    if projection01 is not None:
        ax[2].imshow(projection01.permute(1, 2, 0).cpu().numpy())
        if box is not None:
            y0, x0, y1, x1 = [int(v) for v in box]
            ax[2].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="black", lw=2))
    else:
        ax[2].text(0.5, 0.5, "no projection:\nzero signal\n(e.g. saturated ReLU6 unit)", ha="center", va="center",
                   transform=ax[2].transAxes, fontsize=9)
    ax[2].set_title(f"(c) {rule} projection of {occ.layer} map {occ.channel}\n(box: where it is; "
                    "grey = 0, ±p99 |value|)", fontsize=9)
    labels = occ.label_heatmap.cpu()
    uniq, counts = labels.unique(return_counts=True)
    order = uniq[counts.argsort(descending=True)]
    index = torch.zeros(int(labels.max()) + 1, dtype=torch.long)
    index[order] = torch.arange(len(order))
    cmap = plt.get_cmap("tab20", max(len(order), 2))
    ax[4].imshow(index[labels].numpy(), cmap=cmap, vmin=-0.5, vmax=max(len(order), 2) - 0.5, interpolation="nearest")
    handles = [Patch(color=cmap(i), label=class_name(int(c), class_names)) for i, c in enumerate(order[:12])]
    ax[4].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax[4].set_title("(e) most probable label", fontsize=9)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
        a.set_xlim(-0.5, W - 0.5)
        a.set_ylim(H - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def class_name(c: int, class_names: list[str]) -> str:
    return class_names[c] if c < len(class_names) else str(c)


def occlusion_projection(
    model: Any, image: torch.Tensor, occ: Any, rule: str = "deconvnet"
) -> tuple[torch.Tensor | None, Any]:
    """Panel (c): projection of the map's strongest activation, shaded by the one contrast rule
    (:mod:`convlens.deconv.view`), and its display box (None, None if unavailable)."""
    from convlens.deconv.project import project_max
    from convlens.deconv.view import present, shade

    try:
        proj = project_max(model, image[None], occ.layer, [occ.channel], rule=rule)
        if not proj.images.abs().max() > 0:  # e.g. guided/gradient through a unit clipped by ReLU6
            raise ValueError(f"the {rule} projection of {occ.layer} map {occ.channel} is exactly zero")
        view = present(proj.images[0, 0].cpu(), rf_box=proj.boxes[0, 0])
        return shade(proj.images[0, 0].cpu(), view.scale), list(view.display_box)
    except (ValueError, NotImplementedError) as exc:  # e.g. a model the deconvnet cannot walk
        log.warning("no projection for panel (c): %s", exc)
        return None, None


def label_table(occ: Any, names: list[str]) -> dict[str, Any]:
    labels, counts = occ.top_label.unique(return_counts=True)
    order = counts.argsort(descending=True)
    n = occ.top_label.numel()
    rows = [[class_name(int(labels[i]), names), int(labels[i]), f"{int(counts[i]) / n:.1%}",
             f"{float(occ.probs[..., int(labels[i])].mean()):.3f}"] for i in order[:10]]
    return {"title": "Most probable label over occluder positions (Fig. 7e)",
            "columns": ["label", "class", "share of positions", "mean probability"], "rows": rows}
