"""A block of projections beside the image patches of the same boxes, labelled: one map of Fig. 2.

``convlens project`` draws one for the strongest units of one image, and each Fig. 2 sheet
(:mod:`convlens.topk.sheets`) is a grid of them. Tiles are display-ready (values in [0, 1]);
blocks are (3, H, W) tensors.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from convlens.io.viz import hstack, make_grid, text_block, vstack

__all__ = ["map_block", "value_caption"]


def value_caption(value: float, score: float | None = None) -> str:
    """``"5.13"``; ``"6 (8.31)"`` when a clipped activation was ranked by its pre-clip value."""
    if score is not None and abs(score - value) > 1e-6 * max(1.0, abs(value)):
        return f"{value:.3g} ({score:.3g})"
    return f"{value:.3g}"


def _captioned(tiles: torch.Tensor, captions: Sequence[str], size: int) -> torch.Tensor:
    """(K, 3, T, T) -> (K, 3, T + text, T): each tile with its caption underneath."""
    t = tiles.shape[-1]
    return torch.stack([vstack([tiles[i], text_block([captions[i] if i < len(captions) else ""], t, size=size,
                                                     pad=1)]) for i in range(len(tiles))])


def map_block(proj: torch.Tensor, patch: torch.Tensor, header: Sequence[str], proj_captions: Sequence[str],
              patch_captions: Sequence[str], *, caption_size: int = 10) -> torch.Tensor:
    """One map of Fig. 2: ``header`` lines above a sqrt(K)-wide block of projections (left) and the
    matching image patches (right), each tile captioned.

    Args:
        proj, patch: (K, 3, T, T) display-ready tiles (:func:`convlens.topk.sheets.display_tiles`), strongest first.
        header: lines above the block (e.g. ``["features.3 map 7", "guided"]``).
        proj_captions, patch_captions: one short string per tile (value; class name).

    Example:
        >>> p, q = display_tiles(tiles.projections[0], tiles.patches[0])
        >>> block = map_block(p, q, ["conv5 map 42 (deconvnet)"], ["5.1"] * 9, ["dog"] * 9)
    """
    side = max(1, math.ceil(math.sqrt(len(proj))))
    left = make_grid(_captioned(proj, proj_captions, caption_size), nrow=side, pad=2)
    right = make_grid(_captioned(patch, patch_captions, caption_size), nrow=side, pad=2)
    body = hstack([left, right], pad=8)
    return vstack([text_block(list(header), body.shape[-1], size=caption_size + 2, bold=True), body])
