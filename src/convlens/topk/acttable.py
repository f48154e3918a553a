"""Activation tables: for every mined image and feature map, the map's maximum, on disk.

Written during the mining pass (:func:`convlens.topk.mining.mine_top_activations` with ``table=DIR``),
one table per layer, so that everything beyond the top 9 (bottom examples, quantile examples,
histograms, class statistics, unit labels: :mod:`convlens.topk.unitstats`; unit matching:
:mod:`convlens.topk.compare`) is computed offline, exactly, without another pass. Layout of ``DIR``::

    table.json      {"version", "num_images", "key", "layers": {L: {"file", "maps", "dtype"}},
                     "filled": [[start, stop], ...], "labels": "labels.npy", "images": "images.json"}
    <layer>.npy     (num_images, maps) float16, row i = dataset index i (np.load(..., mmap_mode="r"))
    labels.npy      (num_images,) int32 class label of each row (-1: unknown or not mined)
    filled.npy      (num_images,) uint8, 1 where the row was mined (unreadable images stay 0)
    images.json     the dataset's name of each row (its path relative to the dataset folder)

The value of a row is the statistic the top-k are ranked by: the map's maximum over positions,
taken *before* the clip where the layer's output is clipped (ReLU6), as a float16 (values beyond
65504 become inf). The files are memory-mapped: 50,000 images x 1,280 maps take 128 MB. Rows
are flushed with the mining state, so a killed and resumed run rewrites the same rows with the
same values and ends with the identical table.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ActTable", "ActTableWriter", "filled_ranges", "load_table", "merge_tables", "write_image_names"]

VERSION = 1
META = "table.json"


def filled_ranges(filled: np.ndarray) -> list[list[int]]:
    """``[[start, stop), ...]`` of the runs of nonzero entries of a 1-D mask."""
    f = np.concatenate([[0], (np.asarray(filled) != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(f))
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    tmp = folder / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / META)


@dataclass(frozen=True)
class ActTable:
    """A written activation table (read-only memory maps; see the module docstring).

    Attributes:
        folder: the table's folder.
        num_images: rows (the dataset's size).
        layers: layer -> number of maps.
        meta: the parsed ``table.json``.
    """

    folder: Path
    num_images: int
    layers: dict[str, int]
    meta: dict[str, Any]

    def values(self, layer: str) -> np.ndarray:
        """(num_images, maps) float16 memory map of ``layer``."""
        if layer not in self.layers:
            raise ValueError(f"layer must be one of the table's layers {sorted(self.layers)}, got {layer!r}")
        return np.load(self.folder / self.meta["layers"][layer]["file"], mmap_mode="r")

    def filled(self) -> np.ndarray:
        """(num_images,) bool: rows that were mined."""
        return np.load(self.folder / "filled.npy") != 0

    def rows(self) -> np.ndarray:
        """Dataset indices of the mined rows, ascending."""
        return np.flatnonzero(self.filled())

    def labels(self) -> np.ndarray:
        """(num_images,) int64 class labels (-1: unknown)."""
        return np.load(self.folder / "labels.npy").astype(np.int64)

    def image_names(self) -> list[str]:
        """Per row, the image's name in the dataset (``dataset:<index>`` when none was written)."""
        path = self.folder / str(self.meta.get("images") or "images.json")
        names = json.loads(path.read_text()) if path.is_file() else []
        if len(names) != self.num_images:
            return [f"dataset:{i}" for i in range(self.num_images)]
        return [str(n) for n in names]


def load_table(folder: str | Path) -> ActTable:
    """Open the table in ``folder`` (the ``acts/`` folder of a mined run, or the run itself)."""
    folder = Path(folder)
    if not (folder / META).is_file() and (folder / "acts" / META).is_file():
        folder = folder / "acts"
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"folder must hold an activation table ({META}), got {str(folder)!r} ({exc}); "
                         "mine the run again with this version of convlens") from None
    layers = {str(n): int(v["maps"]) for n, v in meta.get("layers", {}).items()}
    return ActTable(folder, int(meta["num_images"]), layers, meta)


class ActTableWriter:
    """Writes rows of the tables of ``layers`` during a mining pass (see the module docstring).

    Args:
        folder: the table's folder (created).
        num_images: the dataset's size (rows).
        layers: the mined layers.
        key: identifies the run (as the mining state's key); a table written under another key is
            started afresh by :meth:`open`.
    """

    def __init__(self, folder: str | Path, num_images: int, layers: Sequence[str], key: Any) -> None:
        self.folder, self.num_images, self.layers, self.key = Path(folder), int(num_images), list(layers), key
        self._maps: dict[str, np.ndarray] = {}
        self._filled: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def open(self, resume: bool) -> bool:
        """Open the table to continue it (``resume`` and written under the same key), else start a
        fresh one; returns whether it continued."""
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = None
        if resume and (self.folder / META).is_file():
            try:
                meta = json.loads((self.folder / META).read_text())
            except ValueError:
                meta = None
        same = meta is not None and meta.get("key") == json.loads(json.dumps(self.key)) and \
            meta.get("num_images") == self.num_images and meta.get("version") == VERSION
        if same:
            self._filled = np.load(self.folder / "filled.npy", mmap_mode="r+")
            self._labels = np.load(self.folder / "labels.npy", mmap_mode="r+")
            for name in self.layers:
                if name in meta["layers"]:  # type: ignore[index]
                    self._maps[name] = np.load(self.folder / meta["layers"][name]["file"], mmap_mode="r+")  # type: ignore[index]
            return True
        for old in self.folder.glob("*.npy"):
            old.unlink()
        (self.folder / META).unlink(missing_ok=True)
        self._filled = _new(self.folder / "filled.npy", (self.num_images,), np.uint8, 0)
        self._labels = _new(self.folder / "labels.npy", (self.num_images,), np.int32, -1)
        return False

    def write(self, layer: str, indices: torch.Tensor, image_max: torch.Tensor) -> None:
        """Rows ``indices`` of ``layer``: ``image_max`` (maps, B), the per-image maximum."""
        table = self._maps.get(layer)
        if table is None:
            table = self._maps[layer] = _new(self.folder / _file(layer), (self.num_images, image_max.shape[0]),
                                             np.float16, 0)
        rows = indices.cpu().numpy()
        table[rows] = image_max.t().to(torch.float16).cpu().numpy()

    def mark(self, indices: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Rows ``indices`` are written (after every layer's :meth:`write`), with their labels."""
        assert self._filled is not None and self._labels is not None, "open() first"
        rows = indices.cpu().numpy()
        if labels is not None:
            self._labels[rows] = labels.cpu().numpy().astype(np.int32)
        self._filled[rows] = 1

    def flush(self) -> None:
        """Make the rows written so far durable and update ``table.json`` (call before saving the mining state)."""
        assert self._filled is not None and self._labels is not None, "open() first"
        for m in (*self._maps.values(), self._filled, self._labels):
            m.flush()  # type: ignore[attr-defined]
        layers = {n: {"file": _file(n), "maps": int(t.shape[1]), "dtype": "float16"} for n, t in self._maps.items()}
        _write_meta(self.folder, {
            "version": VERSION, "num_images": self.num_images, "key": self.key, "layers": layers,
            "filled": filled_ranges(np.asarray(self._filled)), "labels": "labels.npy", "images": "images.json"})


def _file(layer: str) -> str:
    return layer.replace("/", "_") + ".npy"


def _new(path: Path, shape: tuple[int, ...], dtype: Any, fill: int) -> np.ndarray:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if fill:
        arr[:] = fill
    return arr


def write_image_names(folder: str | Path, dataset: Any) -> None:
    """``images.json``: per row the dataset's name of the image (relative to the dataset folder when
    the dataset has a ``root``; ``dataset:<index>`` when it cannot describe its images)."""
    describe = getattr(dataset, "describe", None)
    raw = getattr(dataset, "raw", dataset)
    root = getattr(raw, "root", None)
    names = []
    for i in range(len(dataset)):
        name = str(describe(i)) if describe else f"dataset:{i}"
        if root is not None and os.path.isabs(name):
            rel = os.path.relpath(name, root)
            name = rel if not rel.startswith("..") else name
        names.append(name.replace(os.sep, "/"))
    tmp = Path(folder) / f".images.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(names))
    os.replace(tmp, Path(folder) / "images.json")


def merge_tables(out: str | Path, parts: Sequence[str | Path]) -> ActTable:
    """Write into ``out`` the table whose rows are the union of the ``parts`` (tables of disjoint
    shards of one dataset: same size, layers and maps); raises ValueError when they overlap or differ."""
    tables = [load_table(p) for p in parts]
    first = tables[0]
    for t in tables[1:]:
        if (t.num_images, t.layers) != (first.num_images, first.layers):
            raise ValueError(f"parts must be tables of one dataset and model: {t.folder} has {t.num_images} rows and "
                             f"layers {t.layers}, {first.folder} has {first.num_images} and {first.layers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writer = ActTableWriter(out, first.num_images, list(first.layers), first.meta.get("key"))
    writer.open(resume=False)
    seen = np.zeros(first.num_images, dtype=bool)
    for t in tables:
        rows = t.filled()
        if (rows & seen).any():
            raise ValueError(f"parts must be disjoint shards: {t.folder} repeats rows "
                             f"{np.flatnonzero(rows & seen)[:5].tolist()} ...")
        seen |= rows
        idx = torch.from_numpy(np.flatnonzero(rows))
        for layer in first.layers:
            writer.write(layer, idx, torch.from_numpy(np.asarray(t.values(layer)[rows], dtype=np.float16)).t())
        writer.mark(idx, torch.from_numpy(t.labels()[rows]))
    writer.flush()
    names = first.folder / "images.json"
    if names.is_file():
        (out / "images.json").write_bytes(names.read_bytes())
    return load_table(out)
