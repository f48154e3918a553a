"""Figures and ``result.json`` of a feature-evolution run (Fig. 4): per layer a grid of projections
(rows = maps, columns = epochs) labelled with the mean correlation of consecutive columns."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["evolution_grid", "write_evolution_outputs"]


def write_evolution_outputs(evo: Any, out: Path, *, num_images: int, split: str = "train",
                            params: dict[str, Any] | None = None) -> Path:
    """``OUT/<layer>_evolution.png`` per layer and ``OUT/result.json`` (kind ``evolution``) of a
    :class:`convlens.evolution.analysis.FeatureEvolution`."""
    from convlens.deconv.view import CONTRAST
    from convlens.io.artifacts import save_png, write_result

    out.mkdir(parents=True, exist_ok=True)
    pairs = [f"{a}→{b}" for a, b in zip(evo.epochs, evo.epochs[1:], strict=False)]
    figures, rows, layers = [], [], {}
    for layer in evo.maps:
        mean = evo.mean_correlation(layer).tolist()
        stable = evo.converged_epoch(layer)
        save_png(evolution_grid(evo, layer), out / f"{layer}_evolution.png")
        figures.append({"path": f"{layer}_evolution.png", "group": layer,
                        "caption": f"{layer}: strongest activation of maps "
                                   f"{', '.join(map(str, evo.maps[layer].tolist()))} "
                                   f"(rows) at epochs {', '.join(map(str, evo.epochs))} (columns), each in its "
                                   f"receptive field, {CONTRAST}; below: mean "
                                   f"correlation of consecutive columns; stable (r >= {evo.threshold}) from epoch "
                                   f"{stable if stable is not None else '- (never)'}"})
        rows.append([layer] + [_fmt(v) for v in mean] + [stable if stable is not None else "-"])
        layers[layer] = {
            "maps": evo.maps[layer].tolist(), "mean_correlation": [_num(v) for v in mean], "converged_epoch": stable,
            "correlation": [[_num(v) for v in r] for r in evo.correlations[layer].tolist()],
            "values": evo.values[layer].tolist(), "indices": evo.indices[layer].tolist(),
        }
    return write_result(
        out, "evolution", title="Feature evolution during training (Fig. 4)",
        summary=f"Strongest activation over {num_images} {split} images of {len(next(iter(evo.maps.values())))} "
                f"random maps per layer, "
                f"at epochs {', '.join(map(str, evo.epochs))}, projected with the deconvnet; a layer counts as "
                f"converged from the first epoch after which consecutive projections keep correlation "
                f">= {evo.threshold}.",
        params=dict(params or {}),
        figures=figures,
        tables=[{"title": "Mean correlation of each map's projection between consecutive epochs",
                 "columns": ["layer", *pairs, "stable from epoch"], "rows": rows}],
        data={"epochs": evo.epochs, "threshold": evo.threshold, "layers": layers, "images": num_images},
    )


def _num(v: float) -> float | None:
    return None if v != v else round(float(v), 4)  # NaN (dead map) -> null


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.2f}"


def evolution_grid(evo: Any, layer: str) -> Any:
    """Rows = maps, columns = epochs; epoch labels on top, mean correlations of neighbours below."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from convlens.deconv.view import render
    from convlens.io.viz import make_grid, to_uint8

    proj = evo.projections[layer]  # (M, E, 3, S, S), each cropped to its receptive field
    side = max(48, proj.shape[-1])  # same receptive-field box every epoch, so that epochs compare
    box = (0, 0, proj.shape[-2], proj.shape[-1])
    tiles = torch.stack([torch.stack([render(p, box, side) for p in maps]) for maps in proj])
    m, e = tiles.shape[:2]
    pad = 4
    grid = make_grid(tiles.reshape(m * e, *tiles.shape[2:]), nrow=e, pad=pad, pad_value=1.0)
    img = Image.fromarray(to_uint8(grid))
    side = tiles.shape[-1] + pad
    canvas = Image.new("RGB", (img.width + 60, img.height + 44), "white")
    canvas.paste(img, (60, 18))
    draw = ImageDraw.Draw(canvas)
    for j, epoch in enumerate(evo.epochs):
        draw.text((60 + pad + j * side, 3), f"ep {epoch}", fill="black")
    for i, ch in enumerate(evo.maps[layer].tolist()):
        draw.text((4, 18 + pad + i * side + side // 2 - 6), f"{layer}:{ch}", fill="black")
    for j, r in enumerate(evo.mean_correlation(layer).tolist()):
        draw.text((60 + pad + (j + 1) * side - 14, img.height + 20), _fmt(r), fill="black")
    stable = evo.converged_epoch(layer)
    draw.text((4, img.height + 20), "r:", fill="black")
    draw.text((60, img.height + 32), f"stable (r>={evo.threshold}) from epoch {stable if stable is not None else '-'}",
              fill="black")
    return np.asarray(canvas)
