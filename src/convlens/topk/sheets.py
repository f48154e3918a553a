"""Fig. 2 figures: per feature map, a block of projections beside a block of image patches, labelled.

Every block names its layer, map and rule; each projection tile is captioned with its activation
(and the pre-clip value that ranked it, for clipped activations such as ReLU6), each patch with the
class of its image (the block of one map: :func:`convlens.deconv.blocks.map_block`). Large layers
are cut into sheets of a fixed number of maps, so that no figure is wider than about 1,700 px at
the default tile size.

All functions take display-ready tiles (values in [0, 1]; see :func:`display_tiles`) and return
(3, H, W) tensors; saving is the caller's business (``artifacts.save_png``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from convlens.io.viz import make_grid, text_block, vstack

__all__ = ["display_tiles", "fig2_sheets", "short_class_name"]

TILE = 64  # displayed side of one tile, pixels
MAPS_PER_SHEET = 16
MAPS_PER_ROW = 4


def display_tiles(projections: torch.Tensor, patches: torch.Tensor, tile: int = TILE) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
    """Raw (..., 3, S, S) projections and patches (already cut to one box each) -> display-ready
    ``tile``-pixel tiles with the one contrast rule of :mod:`convlens.deconv.view` (grey = 0, ±p99
    |value| of each tile), resampled smoothly. (:func:`convlens.deconv.view.present` also finds the box.)"""
    from convlens.deconv.view import contrast_scale, resample, shade

    flat = projections.reshape(-1, *projections.shape[-3:])
    shown = torch.stack([shade(p, contrast_scale(p)) for p in flat]).reshape(projections.shape)
    return resample(shown, tile), resample(patches.clamp(0, 1).float(), tile)


def short_class_name(name: str) -> str:
    """``"great white shark, white shark, ..."`` -> ``"great white shark"``; ``_`` -> space."""
    return name.split(",")[0].replace("_", " ").strip()


def _grid_of_blocks(blocks: Sequence[torch.Tensor], per_row: int) -> torch.Tensor:
    h = max(b.shape[-2] for b in blocks)
    w = max(b.shape[-1] for b in blocks)
    padded = []
    for b in blocks:
        canvas = b.new_ones(3, h, w)
        canvas[:, :b.shape[-2], :b.shape[-1]] = b
        padded.append(canvas)
    return make_grid(torch.stack(padded), nrow=per_row, pad=12)


def fig2_sheets(blocks: Sequence[torch.Tensor], title: Sequence[str], *, maps_per_sheet: int = MAPS_PER_SHEET,
                per_row: int = MAPS_PER_ROW) -> list[torch.Tensor]:
    """Cut map blocks into sheets of ``maps_per_sheet`` (``per_row`` per row), each under ``title``
    followed by ``sheet i/n`` (only when there is more than one sheet)."""
    if not blocks:
        raise ValueError("blocks must hold at least one map block")
    if maps_per_sheet < 1 or per_row < 1:
        raise ValueError(f"maps_per_sheet and per_row must be >= 1, got {maps_per_sheet} and {per_row}")
    chunks = [blocks[i:i + maps_per_sheet] for i in range(0, len(blocks), maps_per_sheet)]
    sheets = []
    for i, chunk in enumerate(chunks):
        grid = _grid_of_blocks(chunk, min(per_row, len(chunk)))
        lines = list(title)
        if len(chunks) > 1 and lines:
            lines[0] = f"{lines[0]}  (sheet {i + 1}/{len(chunks)})"
        sheets.append(vstack([text_block(lines, grid.shape[-1], size=13, pad=6, wrap=True), grid]))
    return sheets
