"""Fig. 2 tiles of mined units: each top-k entry's projection and image patch, cut to its receptive field.

:func:`unit_tiles` re-loads the images of the requested maps' top-k entries by dataset index (one
read per distinct image), projects the entries in batched passes (many images' units per
:func:`convlens.deconv.project.project_units` call) and crops projections and images to each unit's
receptive field; with ``view`` it also makes each entry's displayed pair
(:func:`convlens.deconv.view.present`: cropped to the projection's mass, robust contrast, smooth).
Memory is bounded by the maps asked for: callers with many maps go chunk by chunk
(:func:`convlens.topk.units.project_mined`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convlens.topk.accumulator import TopActivations

__all__ = ["UnitTiles", "unit_tiles"]


@dataclass(frozen=True)
class UnitTiles:
    """Fig. 2 tiles of mined units: projections and image patches, cropped to the RF.

    Attributes:
        projections: (M, K, 3, S, S) raw projections cropped to each unit's receptive field
            (input space, 0 where the field reaches outside the image); ``projview.render`` shows them.
        patches: (M, K, 3, S, S) the image inside the same box (``to_pixels`` space), ``fill`` outside.
        boxes: (M, K, 4) the receptive field ``(y0, x0, y1, x1)``, half-open, clipped to the image.
        values: (M, K) the activation each projection starts from.
        indices: (M, K) dataset index of each entry's image.
        maps: (M,) the channels; ``layer``: the layer. S: the RF side (at most the image side).
        rule: the projection rule used (``auto`` resolved).
        shown, shown_patches: (M, K, 3, V, V) with ``view``: the displayed projections and patches
            (:func:`convlens.deconv.view.present`); ``display_boxes`` (M, K, 4) their box in image pixels,
            ``scales`` (M, K) the |value| shown as black/white, ``shares`` (M, K) the mass share shown.
    """

    projections: torch.Tensor
    patches: torch.Tensor
    boxes: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor
    maps: torch.Tensor
    layer: str
    rule: str = "deconvnet"
    shown: torch.Tensor | None = None
    shown_patches: torch.Tensor | None = None
    display_boxes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    shares: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "rule": self.rule, "maps": self.maps, "values": self.values,
                "indices": self.indices,
                "boxes": self.boxes,
                "projections": self.projections, "patches": self.patches,
                "display_boxes": self.display_boxes, "scales": self.scales}


def unit_tiles(
    model: nn.Module,
    dataset: Any,
    top: TopActivations,
    maps: Sequence[int],
    *,
    to_pixels: Any = None,
    chunk: int = 64,
    fill: float = 1.0,
    rule: str = "auto",
    progress: Callable[[int], None] | None = None,
    view: int | None = None,
) -> UnitTiles:
    """Projection and image patch of each top-k entry of ``maps`` (Fig. 2), batched.

    Args:
        model: the mined model (on its device).
        dataset: the mined dataset; ``dataset[i][0]`` is image i, (3, H, W) normalized.
        top: :func:`mine_top_activations` result for one layer.
        maps: channels to show.
        to_pixels: maps normalized (N, 3, H, W) images to displayable pixels (e.g.
            ``Preprocessing.denormalize``), applied to the whole image before cropping.
        chunk: units per :func:`convlens.deconv.project.project_units` call (one batched pass).
        fill: patch value outside the image.
        rule: projection rule; ``auto`` (default): :func:`convlens.deconv.rules.resolve_rule` for the layer.
        progress: called with the number of units after each batched pass (e.g. ``bar.update``).
        view: side in pixels of the displayed pair (:func:`convlens.deconv.view.present`); None: not made.

    Example:
        >>> tiles = unit_tiles(model, ds, tops["conv5"], [3, 7], to_pixels=ds.pre.denormalize)
        >>> tiles.projections.shape  # (2, 9, 3, S, S)
    """
    from convlens.core.receptive_field import receptive_fields
    from convlens.deconv.project import project_units
    from convlens.deconv.rules import resolve_rule
    from convlens.deconv.view import present

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    maps_t = torch.as_tensor(list(maps), dtype=torch.long)
    if len(maps_t) == 0 or maps_t.min() < 0 or maps_t.max() >= top.values.shape[0]:
        raise ValueError(f"maps must be channels in [0, {top.values.shape[0]}), got {list(maps)}")
    rule, _ = resolve_rule(model, top.layer, rule)
    m, k = len(maps_t), top.values.shape[1]
    entries = [(int(c), r) for c in maps_t for r in range(k)]
    size = tuple(dataset[int(top.dataset_indices[entries[0]])][0].shape[-2:])
    resolve = getattr(model, "resolve", None)
    rf = receptive_fields(model, size).get(resolve(top.layer) if callable(resolve) else top.layer)  # None: unknown
    projections, patches, boxes, values = [], [], [], []
    views: list[Any] = []
    for s in range(0, len(entries), chunk):
        part = entries[s:s + chunk]
        idx = [int(top.dataset_indices[c, r]) for c, r in part]
        loaded = {i: dataset[i][0] for i in set(idx)}  # an image shared by several entries is read once
        images = torch.stack([loaded[i] for i in idx]).to(device=device, dtype=dtype)
        units = torch.stack([torch.cat([torch.tensor([c]), top.positions[c, r].cpu()]) for c, r in part])
        proj = project_units(model, images, top.layer, units[:, None].to(device), rule=rule)  # (n, 1, 3, H, W)
        box = proj.boxes[:, 0].cpu()
        pixels = to_pixels(images) if to_pixels is not None else images
        projections.append(_tiles(proj.images[:, 0].cpu(), box, rf, 0.0))
        if view is not None:
            views += [present(p, q, rf_box=b, size=view, fill=fill)
                      for p, q, b in zip(proj.images[:, 0].cpu(), pixels.cpu(), box, strict=True)]
        patches.append(_tiles(pixels.cpu(), box, rf, fill))
        boxes.append(box), values.append(proj.values[:, 0].cpu())  # type: ignore[func-returns-value]
        if progress is not None:
            progress(len(part))
    proj_tiles, patch_tiles = torch.cat(projections), torch.cat(patches)
    shape = (m, k, *tuple(proj_tiles.shape[1:]))
    shown: dict[str, Any] = {}
    if views:
        vshape = (m, k, *tuple(views[0].shown.shape))
        shown = {"shown": torch.stack([v.shown for v in views]).reshape(vshape),
                 "shown_patches": torch.stack([v.patch for v in views]).reshape(vshape),
                 "display_boxes": torch.tensor([v.display_box for v in views]).reshape(m, k, 4),
                 "scales": torch.tensor([v.scale for v in views], dtype=torch.float64).reshape(m, k),
                 "shares": torch.tensor([v.share for v in views], dtype=torch.float64).reshape(m, k)}
    return UnitTiles(proj_tiles.reshape(shape), patch_tiles.reshape(shape), torch.cat(boxes).reshape(m, k, 4),
                     torch.cat(values).reshape(m, k), top.dataset_indices[maps_t].cpu(), maps_t, top.layer, rule,
                     **shown)


def _tiles(images: torch.Tensor, boxes: torch.Tensor, rf: Any, fill: float) -> torch.Tensor:
    """Crop (N, 3, H, W) to each box into an S x S tile; a box clipped at the top/left edge is placed
    at the bottom/right of its tile, where the unclipped field would have put it."""
    h, w = images.shape[-2:]
    s = min(rf.size, h, w) if rf is not None and rf.stride else min(h, w)
    out = images.new_full((len(images), images.shape[1], s, s), fill)
    for n, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        crop = images[n, :, y0:y1, x0:x1][:, :s, :s]
        oy = s - crop.shape[1] if y0 == 0 and y1 < h else 0
        ox = s - crop.shape[2] if x0 == 0 and x1 < w else 0
        out[n, :, oy:oy + crop.shape[1], ox:ox + crop.shape[2]] = crop
    return out
