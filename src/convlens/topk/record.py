"""What ``convlens mine`` used, recorded in its ``result.json``, and re-opening it to project on demand (Fig. 2).

``mine --project none`` (or ``grid``) leaves most maps without projections. To show them later
without mining again, the mining run records its source in ``params["source"]``: the model spec,
weights, preprocessing flags and data set, with absolute paths (:func:`mine_source`).
:func:`open_mined` re-opens all three from that record (the model once, the data set without
reading any image), and :func:`project_maps` projects chosen maps through
:func:`convlens.topk.units.project_mined`, the function ``mine`` itself uses: the same PNGs and
per-map JSON in the same place (``units/<layer>/``), so a map projected on demand is
indistinguishable from one ``mine`` projected.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MinedSource", "mine_source", "open_mined", "project_maps", "warm_up"]


def _abs(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def mine_source(*, checkpoint: str | None, arch: str | None, weights: str | None, normalize: str | None,
                input_size: int | None, classes: str | None, dataset: str, data_dir: str | None, split: str,
                limit: int | None) -> dict[str, Any]:
    """The record :func:`open_mined` reads back: the flags ``mine`` was given, file paths made absolute.

    A dataset name that is not a folder (``cifar10``) is kept as given.
    """
    ds = _abs(dataset) if Path(dataset).expanduser().is_dir() else dataset
    return {"checkpoint": _abs(checkpoint), "arch": arch, "weights": _abs(weights), "normalize": normalize,
            "input_size": input_size, "classes": _abs(classes), "dataset": ds, "data_dir": _abs(data_dir),
            "split": split, "limit": limit}


@dataclass
class MinedSource:
    """A mining run re-opened: the loaded model (:class:`convlens.nets.loading.Loaded`), the data set,
    the display class names and the top-k per layer (read from ``topk.pt`` on first use)."""

    out: Path
    loaded: Any
    dataset: Any
    class_names: list[str]
    _tops: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _weights: tuple[tuple[int, ...], str] | None = None

    def weights(self) -> str:
        """The model's :func:`convlens.nets.fingerprint.weights_fingerprint`, hashed again only when a
        weight tensor was changed in place since (its version counter moved)."""
        from convlens.nets.fingerprint import weights_fingerprint

        with self._lock:
            versions = tuple(t._version for t in self.loaded.model.state_dict().values())
            if self._weights is None or self._weights[0] != versions:
                self._weights = (versions, weights_fingerprint(self.loaded.model))
            return self._weights[1]

    def top(self, layer: str) -> Any:
        """The layer's :class:`~convlens.topk.accumulator.TopActivations` (ValueError when it was not mined)."""
        import torch

        from convlens.topk.accumulator import TopActivations

        with self._lock:
            if layer not in self._tops:
                path = self.out / "topk.pt"
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is missing; mine the run again to project its maps")
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if layer not in saved:
                    raise ValueError(f"layer {layer!r} is not in {path.name}; mined: {', '.join(saved)}")
                d = dict(saved[layer])
                d.pop("class_means", None), d.pop("class_counts", None)  # not needed to project
                self._tops[layer] = TopActivations(**d)
            return self._tops[layer]


def warm_up(source: MinedSource, layers: dict[str, str]) -> None:
    """Do ahead what a first :func:`project_maps` of ``layers`` (layer -> its mined rule) does once: read
    their top-k, hash the weights, trace the model and project map 0's top-k per layer (nothing written;
    the same batch shapes as a page's, so the convolution kernels are ready too: the first map after a
    start otherwise took 1.8 CPU-s against 1.3). A server calls it in the background so that its first
    unit page costs what later ones do."""
    import torch

    from convlens.deconv.project import project_units

    source.weights()
    param = next(source.loaded.model.parameters())
    for layer, rule in layers.items():
        top = source.top(layer)
        images = torch.stack([source.dataset[int(i)][0] for i in top.dataset_indices[0].tolist()])
        units = torch.cat([torch.zeros(len(images), 1, dtype=torch.long), top.positions[0].cpu()], 1)[:, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the rule's notes are given when a map is projected
            project_units(source.loaded.model, images.to(param.device, param.dtype), layer, units.to(param.device),
                          rule=rule)


def _source_of(params: dict[str, Any]) -> dict[str, Any]:
    """``params["source"]``, or for runs mined before it was recorded, the plain params."""
    src = params.get("source")
    if isinstance(src, dict):
        return src
    return {k: params.get(k) for k in ("checkpoint", "arch", "weights", "normalize", "input_size", "classes",
                                       "dataset", "data_dir", "split", "limit")}


def open_mined(out: str | Path, params: dict[str, Any], *, device: str = "cpu") -> MinedSource:
    """Re-open the model and data set a ``mine`` run used, from its ``result.json`` ``params``.

    Args:
        out: the mining run's folder (``topk.pt`` and ``units/`` live there).
        params: its ``result.json`` ``params`` (with ``source``: see :func:`mine_source`).
        device: where to put the model.

    Raises:
        ValueError: the record names no model or no data set (mined by hand, or by an old convlens).
        FileNotFoundError: a recorded file or folder is gone.

    Example:
        >>> src = open_mined("runs/r/mine", json.load(open("runs/r/mine/result.json"))["params"])
        >>> project_maps(src, "features.16", [73], rule="guided")
    """
    from convlens.images.data import open_dataset
    from convlens.nets.loading import load_model
    from convlens.topk.units import display_class_names

    s = _source_of(params)
    spec = s.get("checkpoint") or s.get("arch")
    if not spec or not s.get("dataset"):
        raise ValueError("this run's result.json does not record the model and data set it was mined with "
                         "(params.source); mine it again with a current convlens, or start the explorer with "
                         "--arch SPEC --weights W to upload images only")
    for key in ("checkpoint", "weights", "classes"):
        if s.get(key) and not Path(s[key]).is_file():
            raise FileNotFoundError(f"the model file this run was mined with is gone: {key} {s[key]}")
    loaded = load_model(spec, weights=s.get("weights") if s.get("arch") else None, normalize=s.get("normalize"),
                        input_size=s.get("input_size"), classes=s.get("classes"), map_location=device)
    ds = open_dataset(str(s["dataset"]), str(s.get("split") or "test"), loaded.preprocessing,
                      data_dir=s.get("data_dir"), limit=s.get("limit"))
    names = display_class_names(getattr(ds, "classes", []), loaded.class_names)
    return MinedSource(Path(out), loaded, ds, names)


def project_maps(source: MinedSource, layer: str, maps: Sequence[int], *, rule: str,
                 expected: dict[int, Sequence[str]] | None = None) -> dict[int, list[dict[str, Any]]]:
    """Project the top-k of ``maps`` of ``layer`` and write them where ``mine`` would have
    (:func:`convlens.topk.units.project_mined`; maps already done are read back, not recomputed).

    Args:
        source: :func:`open_mined`'s result.
        layer, maps: what to project.
        rule: the rule the layer was mined with (``result.json`` ``data.layers[layer].rule``).
        expected: per map, the image descriptions ``result.json`` lists for its top-k; checked
            against the re-opened data set, so a data set changed since mining is refused.

    Returns:
        Per map, the entries (``projection`` and ``patch`` paths relative to ``source.out``).

    Raises:
        ValueError: the data set no longer holds the mined images at the mined positions.
    """
    from convlens.topk.units import project_mined

    top = source.top(layer)
    describe = getattr(source.dataset, "describe", None)
    for m, images in (expected or {}).items():
        idx = [int(i) for i in top.dataset_indices[m].tolist()]
        found = [describe(i) if describe else f"dataset:{i}" for i in idx] if max(idx) < len(source.dataset) else []
        if list(images) != found:
            raise ValueError(f"the data set this run was mined on has changed since (map {m} of {layer} lists other "
                             "images); mine it again to see its projections")
    k = int(top.values.shape[1])
    done = project_mined(source.loaded.model, source.dataset, top, source.out, maps=list(maps), rule=rule,
                         to_pixels=source.loaded.preprocessing.denormalize, class_names=source.class_names,
                         batch=k, weights=source.weights())  # a map's k units in one batched pass
    return done.entries
