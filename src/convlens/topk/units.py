"""Projecting every mined unit at dataset scale, resumably, and the Fig. 2 sheets built from them.

:func:`project_mined` takes one layer's :class:`~convlens.topk.accumulator.TopActivations` and, map chunk by
map chunk, re-loads the top-k images by dataset index, projects their units in batched passes
(:func:`convlens.topk.tiles.unit_tiles`), and writes per unit four PNGs and per map one JSON file::

    OUT/units/<layer>/<map>_<rank>_proj.png        projection as displayed (:mod:`convlens.deconv.view`:
                                                   cropped to its mass, robust contrast, resampled smoothly)
    OUT/units/<layer>/<map>_<rank>_patch.png       the image inside the same (display) box
    OUT/units/<layer>/<map>_<rank>_proj_full.png   the projection in the whole receptive field, full size
    OUT/units/<layer>/<map>_<rank>_patch_full.png  the image inside the receptive field, full size
    OUT/units/<layer>/<map>.json                   {"layer", "map", "rule", "weights", "saturated", "contrast",
                                                   "entries"}

Each entry records ``box``/``rf_box`` (the receptive field), ``display_box`` (what the displayed
pair shows), ``mass_share`` (the projection's mass inside it) and ``contrast_scale``.

Memory is bounded by one chunk (``chunk_maps`` maps x k units), whatever the dataset or layer
size. A map's JSON is written (atomically) after its PNGs, so it marks the map as done: a stopped
run that is started again skips every map whose JSON matches the current top-k, rule and weights
(``weights``: :func:`convlens.nets.fingerprint.weights_fingerprint`, a hash of the model's tensors),
so a rerun into the same folder with another model recomputes every map.

:func:`layer_sheets` reads those PNGs back and lays out labelled Fig. 2 sheets
(:mod:`convlens.topk.sheets`); it never needs the projections in memory.
"""
from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.deconv.blocks import map_block, value_caption
from convlens.deconv.view import CONTRAST, resample, shade
from convlens.io.artifacts import atomic_write, save_png
from convlens.io.viz import upscale_nearest
from convlens.topk.accumulator import TopActivations
from convlens.topk.sheets import fig2_sheets, short_class_name

__all__ = ["MinedUnits", "display_class_names", "layer_sheets", "project_mined"]

_WNID = re.compile(r"^n\d{8}$")
VIEW = 104  # side of the displayed projection and patch PNGs, pixels (the explorer's unit page)


def display_class_names(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> list[str]:
    """Readable names of the dataset's labels: the dataset's folder names, unless they are ImageNet
    WordNet ids (``n01440764``) and the model names as many classes (then the model's names, in
    the standard sorted-wnid order: ``tench`` ...)."""
    ds = [str(c) for c in dataset_classes]
    if not ds:
        return [str(c) for c in model_classes]
    if len(model_classes) == len(ds) and all(_WNID.match(c) for c in ds):
        return [str(c) for c in model_classes]
    return ds


@dataclass(frozen=True)
class MinedUnits:
    """What :func:`project_mined` did for one layer.

    Attributes:
        layer, rule, reason: the layer and the projection rule used, with why (``auto`` resolved).
        entries: per map, one dict per rank (see :func:`map_entries`); paths relative to ``out``.
        reused: maps found done on disk (resumed), not recomputed.
    """

    layer: str
    rule: str
    reason: str
    entries: dict[int, list[dict[str, Any]]]
    reused: int


def map_entries(top: TopActivations, m: int, class_names: Sequence[str], describe: Callable[[int], str] | None,
                boxes: torch.Tensor | None = None, *, paths: bool = True) -> list[dict[str, Any]]:
    """Per rank of map ``m``: value, pre-clip score, image index/label/class/description, position,
    box, ``saturated`` (clipped layers: the value is at the ceiling) and the PNG paths (relative to
    the output folder; left out with ``paths=False``, for maps not projected yet)."""
    rel = f"units/{top.layer}"
    out = []
    for r in range(top.values.shape[1]):
        idx = int(top.dataset_indices[m, r])
        label = int(top.labels[m, r]) if top.labels is not None else -1
        e: dict[str, Any] = {
            "rank": r, "value": float(top.values[m, r]),
            "score": float(top.scores[m, r]) if top.scores is not None else float(top.values[m, r]),
            "index": idx, "image": describe(idx) if describe else f"dataset:{idx}", "label": label,
            "class": class_names[label] if 0 <= label < len(class_names) else "",
            "y": int(top.positions[m, r, 0]), "x": int(top.positions[m, r, 1]),
        }
        if paths:
            e["projection"], e["patch"] = f"{rel}/{m}_{r}_proj.png", f"{rel}/{m}_{r}_patch.png"
            e["projection_full"], e["patch_full"] = f"{rel}/{m}_{r}_proj_full.png", f"{rel}/{m}_{r}_patch_full.png"
        if top.ceiling is not None:
            e["saturated"] = e["value"] >= top.ceiling
        if boxes is not None:
            e["box"] = e["rf_box"] = [int(v) for v in boxes[r]]
        out.append(e)
    return out


def _done(path: Path, entries: list[dict[str, Any]], rule: str, weights: str) -> list[dict[str, Any]] | None:
    """The saved entries of a finished map if they match the current top-k, rule and model weights."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    old = saved.get("entries") or []
    same = saved.get("rule") == rule and saved.get("weights") == weights and \
        [(e["index"], e["y"], e["x"]) for e in old] == [(e["index"], e["y"], e["x"]) for e in entries]
    root = path.parent.parent.parent
    if not same or not all("display_box" in e and (root / e["projection"]).is_file() for e in old):
        return None
    return old


def project_mined(
    model: nn.Module,
    dataset: Any,
    top: TopActivations,
    out: str | Path,
    *,
    maps: Sequence[int] | None = None,
    rule: str = "auto",
    to_pixels: Callable[[torch.Tensor], torch.Tensor] | None = None,
    class_names: Sequence[str] = (),
    chunk_maps: int = 4,
    batch: int = 8,
    min_side: int = 48,
    view: int = VIEW,
    progress: Any = None,
    weights: str | None = None,
) -> MinedUnits:
    """Project and save every top-k unit of ``maps`` (default: all maps of the layer), resumably.

    Args:
        model: the mined model (on its device).
        dataset: the mined dataset (``dataset[i][0]`` is image i, normalized; ``describe(i)`` optional).
        top: :func:`convlens.topk.mining.mine_top_activations` result for one layer.
        out: the output folder (PNGs and JSON under ``units/<layer>/``).
        maps: channels to project (default all).
        rule: projection rule; ``auto`` resolved per layer (:func:`convlens.deconv.rules.resolve_rule`).
        to_pixels: normalized images -> displayable pixels (e.g. ``Preprocessing.denormalize``).
        class_names: names of the dataset's labels (:func:`display_class_names`).
        chunk_maps: maps per chunk (memory bound: chunk_maps x k projections at a time).
        batch: units per :func:`convlens.deconv.project.project_units` call (each unit's image goes through
            the network with gradients: about 100 MB per unit for MobileNetV2 at 224 px on the generic path).
        min_side: full-size PNGs of fields smaller than this are enlarged (integer factor, nearest
            neighbour, so that each input pixel stays a visible square).
        view: side in pixels of the displayed pair (the size the explorer shows them at).
        progress: a ``tqdm`` bar advanced by one per unit (projected or found done).
        weights: the model's :func:`convlens.nets.fingerprint.weights_fingerprint` (computed here when
            None; pass it to hash once for several layers). Saved maps of other weights are recomputed.

    Example:
        >>> done = project_mined(model, ds, tops["features.3"], "out", to_pixels=ds.pre.denormalize)
        >>> done.entries[7][0]["projection"]   # 'units/features.3/7_0_proj.png'
    """
    from convlens.deconv.rules import resolve_rule
    from convlens.nets.fingerprint import weights_fingerprint
    from convlens.topk.tiles import unit_tiles

    rule, reason = resolve_rule(model, top.layer, rule)
    weights = weights or weights_fingerprint(model)
    out = Path(out)
    folder = out / "units" / top.layer
    folder.mkdir(parents=True, exist_ok=True)
    c, k = top.values.shape
    maps = list(range(c)) if maps is None else [int(m) for m in maps]
    describe = getattr(dataset, "describe", None)
    saturated = top.saturated
    entries: dict[int, list[dict[str, Any]]] = {}
    todo = []
    for m in maps:
        fresh = map_entries(top, m, class_names, describe)
        old = _done(folder / f"{m}.json", fresh, rule, weights)
        if old is None:
            todo.append(m)
        else:
            entries[m] = old
    if progress is not None:
        progress.update(len(entries) * k)
    notes: dict[str, type[Warning]] = {}
    for s in range(0, len(todo), max(1, chunk_maps)):
        part = todo[s:s + chunk_maps]
        with warnings.catch_warnings(record=True) as caught:  # the rule's notes, once per layer, not per call
            warnings.simplefilter("always")
            tiles = unit_tiles(model, dataset, top, part, to_pixels=to_pixels, chunk=batch, rule=rule,
                               progress=None if progress is None else progress.update, view=view)
        for w in caught:
            notes.setdefault(str(w.message), w.category)
        assert tiles.shown is not None and tiles.shown_patches is not None and tiles.display_boxes is not None
        assert tiles.scales is not None and tiles.shares is not None
        factor = max(1, -(-min_side // tiles.projections.shape[-1]))
        for i, m in enumerate(part):
            fresh = map_entries(top, m, class_names, describe, tiles.boxes[i])
            pngs: list[tuple[torch.Tensor, Path]] = []
            for r, e in enumerate(fresh):
                scale = float(tiles.scales[i, r])
                # rounded like the PNGs are quantized: a map recomputed after a kill, in another batch,
                # differs from the uninterrupted run's float32 only below this precision
                e.update(display_box=[int(v) for v in tiles.display_boxes[i, r]], contrast_scale=float(f"{scale:.4g}"),
                         mass_share=round(float(tiles.shares[i, r]), 4))
                pngs += [(tiles.shown[i, r], out / e["projection"]), (tiles.shown_patches[i, r], out / e["patch"]),
                         (upscale_nearest(shade(tiles.projections[i, r], scale), factor), out / e["projection_full"]),
                         (upscale_nearest(tiles.patches[i, r].clamp(0, 1), factor), out / e["patch_full"])]
            _save_pngs(pngs)
            doc = {"layer": top.layer, "map": m, "rule": rule, "weights": weights, "saturated": bool(saturated[m]),
                   "contrast": CONTRAST,
                   "entries": fresh}
            _write_json(folder / f"{m}.json", doc)  # after its PNGs: a map with a JSON is complete
            entries[m] = fresh
        del tiles
    for text, category in notes.items():
        warnings.warn(text, category, stacklevel=2)
    return MinedUnits(top.layer, rule, reason, {m: entries[m] for m in maps}, len(maps) - len(todo))


def _save_pngs(pngs: list[tuple[torch.Tensor, Path]]) -> None:
    """Write a map's PNGs on two threads (zlib and fsync release the GIL: encoding one while the disk
    syncs another halves the wait)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        for _ in pool.map(lambda job: save_png(*job), pngs):
            pass


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    text = json.dumps(doc)

    def write(f: Any) -> None:
        f.write(text)

    atomic_write(path, write)


def _read_png(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def layer_sheets(out: str | Path, layer: str, entries: dict[int, list[dict[str, Any]]], maps: Sequence[int], *,
                 rule: str, saturated: Sequence[int] = (), title: str = "", tile: int = 64,
                 maps_per_sheet: int = 16, per_row: int = 4) -> list[torch.Tensor]:
    """Labelled Fig. 2 sheets of ``maps`` from the PNGs :func:`project_mined` wrote: per map a
    header (layer, map, rule), its projections captioned with activations (and pre-clip values),
    its patches captioned with class names; ``maps_per_sheet`` maps per sheet."""
    out = Path(out)
    sat = set(saturated)
    blocks = []
    for m in maps:
        es = entries[m]
        proj = torch.stack([resample(_read_png(out / e["projection"]), tile) for e in es])
        patch = torch.stack([resample(_read_png(out / e["patch"]), tile) for e in es])
        head = f"{layer} map {m}" + (" (saturated)" if m in sat else "")
        blocks.append(map_block(proj, patch, [head], [value_caption(e["value"], e.get("score")) for e in es],
                                [short_class_name(e.get("class") or "") or f"#{e['index']}" for e in es]))
    k = max(len(entries[m]) for m in maps)
    clip = " (pre-clip value in brackets where the unit saturates)" if sat else ""
    lines = [title or f"{layer}: top-{k} activations per map, rule {rule}",
             f"left: projections, captioned with the activation{clip}; right: the image patches of the same "
             f"boxes, captioned with the image's class; each cropped to where its projection is; {CONTRAST}"]
    return fig2_sheets(blocks, lines, maps_per_sheet=maps_per_sheet, per_row=per_row)
