"""Feature visualizations on disk: resumable per unit, with the sanity ratio, and a run's cache.

Layout (the same for ``convlens featvis --out DIR`` and for a run's cache ``RUN/featvis``)::

    DIR/<layer>/unit_<u>.png          the unit's image (K > 1: unit_<u>_<k>.png, k = 0..K-1)
    DIR/<layer>/unit_<u>.json         {"layer", "unit", "settings", "images", "activation", "peak",
                                       "top1", "ratio"} (see :func:`render_to_dir`)

Each unit's PNGs are written first and its JSON last, both atomically, so the JSON marks the unit
as done: a rerun with the same settings (layer, model, :class:`~.render.FeatvisConfig` except
``channels_last``) skips it; other settings redo it.

The **sanity ratio** (Geirhos et al. 2024 show feature visualizations can be made to mislead): the
saved PNG is read back (uint8), put through the model's preprocessing and the model up to the
layer; ``activation`` is the objective (channel mean or centre), ``peak`` the map's maximum over
positions, and ``ratio = peak / top1`` with ``top1`` the unit's strongest activation in a mined
run (``convlens mine`` ranks images by the map's maximum over positions: the same statistic).
Without a mined run ``top1`` and ``ratio`` are null.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens.featvis.render import DEFAULT_CONFIG, FeatvisConfig, model_dtype_device, objective_values, render
from convlens.featvis.truncated import truncated_forward
from convlens.images.data import Preprocessing
from convlens.io.artifacts import save_png, write_json

__all__ = ["CACHE_DIR", "mined_top1", "read_back", "render_to_dir", "unit_featvis"]

CACHE_DIR = "featvis"  # a run's cache: RUN/featvis/<layer>/unit_<u>.{png,json}


def _settings(layer: str, model_name: str, config: FeatvisConfig) -> dict[str, Any]:
    cfg = {k: v for k, v in config.to_dict().items() if k != "channels_last"}
    return {"layer": layer, "model": model_name, **cfg}


def _names(unit: int, k: int) -> list[str]:
    return [f"unit_{unit}.png"] if k == 1 else [f"unit_{unit}_{i}.png" for i in range(k)]


def _done(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = doc.get("settings") == settings and all((path.parent / p).is_file() for p in doc.get("images", []))
    return doc if ok else None


def read_back(model: nn.Module, layer: str, paths: Sequence[Path], units: Sequence[int], *,
              preprocessing: Preprocessing, objective: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, peak), each (N,): the saved PNGs (uint8) through the preprocessing and the model up to ``layer``.

    ``units[i]`` is the channel of ``paths[i]``. The model's mode is left as found.
    """
    dtype, device = model_dtype_device(model)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(dtype=dtype, device=device) / 255.0
    channels = torch.tensor(list(units), device=device)
    mode = model.training
    model.eval()
    try:
        with torch.no_grad():
            act = truncated_forward(model, layer)(preprocessing.normalize(pixels))
    finally:
        model.train(mode)
    peak = act[torch.arange(len(paths), device=device), channels].flatten(1).amax(1)
    return objective_values(act, channels, objective).cpu(), peak.cpu()


def mined_top1(run: str | Path, layer: str) -> dict[int, float] | None:
    """Each unit's strongest mined activation from ``run/topk.pt`` (a ``convlens mine`` output), or
    None when the run has no mining or did not mine ``layer``.

    Raises:
        FileNotFoundError: ``run`` is not a folder.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"--run {run}: no such folder; expected the output folder of 'convlens mine'")
    path = run / "topk.pt"
    if not path.is_file():
        return None
    tops = torch.load(path, map_location="cpu", weights_only=True)
    top = tops.get(layer)
    if top is None or top["values"].shape[1] == 0:
        return None
    return {c: float(v) for c, v in enumerate(top["values"][:, 0].tolist())}


def render_to_dir(model: nn.Module, layer: str, units: Sequence[int], out: str | Path, *,
                  preprocessing: Preprocessing, config: FeatvisConfig = DEFAULT_CONFIG, model_name: str = "",
                  top1: Mapping[int, float] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Render the units not yet done in ``out`` (one batch), save them, and return every unit's record.

    Args:
        model, layer, units, preprocessing, config, progress: see :func:`.render.render`.
        out: the folder (layout in the module docstring).
        model_name: identifies the model in the settings (e.g. ``Loaded.arch``).
        top1: unit -> its strongest mined activation (:func:`mined_top1`), for the sanity ratio.

    Returns:
        Per unit, in the order given: ``{"layer", "unit", "settings", "images" (file names in
        ``out/<layer>``), "activation", "peak" (one per image), "top1", "ratio"}``.

    Example:
        >>> recs = render_to_dir(model, "features.13", range(16), "fv", preprocessing=pre)
        >>> recs[0]["images"], recs[0]["activation"]
    """
    folder = Path(out) / layer
    settings = _settings(layer, model_name, config)
    done = {u: _done(folder / f"unit_{u}.json", settings) for u in dict.fromkeys(int(u) for u in units)}
    todo = [u for u, doc in done.items() if doc is None]
    if todo:
        fv = render(model, layer, todo, preprocessing=preprocessing, config=config, progress=progress)
        for i, u in enumerate(fv.units):
            done[u] = _save_unit(model, layer, u, fv.images[i], folder, settings, preprocessing, config, top1)
    return [done[int(u)] for u in units]  # type: ignore[misc]


def _save_unit(model: nn.Module, layer: str, unit: int, images: torch.Tensor, folder: Path,
               settings: dict[str, Any], pre: Preprocessing, config: FeatvisConfig,
               top1: Mapping[int, float] | None) -> dict[str, Any]:
    names = _names(unit, images.shape[0])
    for name, img in zip(names, images, strict=True):
        save_png(img, folder / name)
    act, peak = read_back(model, layer, [folder / n for n in names], [unit] * len(names), preprocessing=pre,
                          objective=config.objective)
    best = None if top1 is None else top1.get(unit)
    ratio = None if not best else [float(p) / best for p in peak.tolist()]
    doc = {"layer": layer, "unit": unit, "settings": settings, "images": names, "activation": act.tolist(),
           "peak": peak.tolist(), "top1": best, "ratio": ratio}
    write_json(doc, folder / f"unit_{unit}.json")
    return doc


def unit_featvis(run: str | Path, loaded: Any, layer: str, unit: int, *,
                 config: FeatvisConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """One unit of a run, cached in ``run/featvis`` (for the explorer's unit page): its record
    (see :func:`render_to_dir`), with ``path``, the first image's path, added.

    Args:
        run: a run folder (a ``convlens mine`` output gives the sanity ratio).
        loaded: the run's model (:class:`convlens.nets.loading.Loaded`).
    """
    cache = Path(run) / CACHE_DIR
    rec = render_to_dir(loaded.model, layer, [unit], cache, preprocessing=loaded.preprocessing, config=config,
                        model_name=loaded.arch, top1=mined_top1(run, layer))[0]
    return {**rec, "path": str(cache / layer / rec["images"][0])}
