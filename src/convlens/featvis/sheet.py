"""The contact sheet and ``result.json`` of ``convlens featvis`` (kind ``featvis``).

:func:`write_featvis` is the whole command: render (resumably, :func:`.store.render_to_dir`),
read the mined top-1 values when a run is given, lay out the contact sheet, write ``result.json``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.featvis.render import DEFAULT_CONFIG, FeatvisConfig
from convlens.featvis.store import mined_top1, render_to_dir
from convlens.io.artifacts import save_png, write_result
from convlens.io.viz import hstack, resize_tile, text_block, vstack

__all__ = ["NO_RUN_NOTE", "contact_sheet", "tile_caption", "write_featvis"]

TILE = 160
PER_ROW = 8
NO_RUN_NOTE = ("ratio to top-1 absent: no mined run given (--run RUN, a 'convlens mine' output that mined this "
               "layer); the natural top-9 remain the primary view")


def tile_caption(rec: dict[str, Any], k: int = 0) -> list[str]:
    """Two lines: ``unit 7`` and ``act 3.2 | 1.4x top-1`` (``top-1: n/a`` without a mined run)."""
    ratio = rec["ratio"][k] if rec.get("ratio") else None
    tail = f"{ratio:.2f}x top-1" if ratio is not None else "top-1: n/a"
    return [f"unit {rec['unit']}" + (f" #{k}" if len(rec["images"]) > 1 else ""),
            f"act {rec['activation'][k]:.3g} | {tail}"]


def contact_sheet(folder: Path, records: Sequence[dict[str, Any]], title: str, *, tile: int = TILE,
                  per_row: int = PER_ROW) -> torch.Tensor:
    """(3, H, W) sheet: a title, then one captioned tile per image, ``per_row`` per row."""
    from PIL import Image

    cells = []
    for rec in records:
        for k, name in enumerate(rec["images"]):
            with Image.open(folder / name) as im:
                img = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1) / 255.0
            cells.append(vstack([resize_tile(img, tile), text_block(tile_caption(rec, k), tile, size=11)]))
    rows = [hstack(cells[i:i + per_row], pad=4) for i in range(0, len(cells), per_row)]
    grid = vstack(rows, pad=6)
    return vstack([text_block([title], grid.shape[-1], size=13, bold=True, wrap=True), grid], pad=4)


def write_featvis(loaded: Any, layer: str, units: Sequence[int], out: str | Path, *,
                  config: FeatvisConfig = DEFAULT_CONFIG, run: str | Path | None = None,
                  progress: bool = False, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render ``units`` of ``layer`` into ``out`` (resumable), save ``featvis_<layer>.png`` (the contact
    sheet) and ``result.json`` (kind ``featvis``); return the result's ``data``.

    Args:
        loaded: :class:`convlens.nets.loading.Loaded` (model, preprocessing, name).
        run: a ``convlens mine`` output folder for the sanity ratio (None: the ratio is absent).
        params: recorded in ``result.json`` (the CLI's flags).

    Raises:
        FileNotFoundError: ``run`` is not a folder.
        ValueError: see :func:`.render.render`.
    """
    out = Path(out)
    top1 = mined_top1(run, layer) if run is not None else None
    records = render_to_dir(loaded.model, layer, units, out, preprocessing=loaded.preprocessing, config=config,
                            model_name=loaded.arch, top1=top1, progress=progress)
    note = None if top1 is not None else NO_RUN_NOTE
    if run is not None and top1 is None:
        note = f"ratio to top-1 absent: {run} has no mining of layer {layer!r} (topk.pt)"
    what = f"{config.objective} objective, {config.steps} steps, {config.size} px, seed {config.seed}"
    sheet = f"featvis_{layer}.png"
    save_png(contact_sheet(out / layer, records, f"{loaded.arch} {layer}: images optimized to excite each unit "
                           f"({what}); act = objective read back from the saved PNG"), out / sheet)
    ratios = [r for rec in records for r in (rec["ratio"] or [])]
    summary = (f"{len(records)} units of {layer}, {what}" + (f"; peak / mined top-1: min {min(ratios):.2f}, "
                                                             f"max {max(ratios):.2f}" if ratios else f"; {note}"))
    rows = [[rec["unit"], f"{max(rec['activation']):.4g}", f"{max(rec['peak']):.4g}",
             "" if rec["top1"] is None else f"{rec['top1']:.4g}",
             "" if not rec["ratio"] else f"{max(rec['ratio']):.2f}"] for rec in records]
    data = {"layer": layer, "units": [dict(rec, images=[f"{layer}/{n}" for n in rec["images"]]) for rec in records],
            "config": config.to_dict(), "note": note, "run": None if run is None else str(run)}
    write_result(out, "featvis", title=f"Feature visualization: {layer}", summary=summary,
                 params=dict(params or {}) | {"layer": layer, "config": config.to_dict()},
                 figures=[{"path": sheet, "caption": f"one image per unit, optimized to excite it ({what}); "
                           "the natural top-9 (convlens mine) remain the primary view", "group": layer}],
                 tables=[{"title": f"Feature visualization: {layer}",
                          "columns": ["unit", "activation (objective)", "peak", "mined top-1", "peak / top-1"],
                          "rows": rows}], data=data)
    return data
