"""What the explorer knows about a run's mined feature maps, indexed once per change of the run.

``convlens mine`` writes ``OUT/result.json`` whose ``data.layers[L].maps[m]`` is the map's top-k
(a list of entries, or an object with ``entries`` and per-map metadata), ``data.class_names``, and
``OUT/class_means.npz``: per layer an (n_maps, n_classes) float32 array of the map's mean activation
over the images of each class, plus ``__counts__`` (n_classes,) images per class. This module turns
them into plain objects the pages read: :class:`MinedLayer` (every map, with the three sort keys of
the layer page precomputed), :class:`ClassMeans`. Nothing here touches torch, and nothing raises on
a malformed file: odd entries are skipped.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from convlens.io.manifest import Result

__all__ = ["RULE_CHOICES", "SORTS", "ClassMeans", "Entry", "MapInfo", "Mined", "MinedLayer", "file_url", "index_mine",
           "saturation_share", "url_maker"]

RULE_CHOICES = ("auto", "deconvnet", "guided", "gradient")
"""Projection rules offered for uploads (``auto``: see :func:`convlens.explorer.compute.resolve_rule`)."""

SORTS = {
    "map": "map number",
    "value": "activation strength (top-1, pre-clip where clipped)",
    "classes": "classes spanned by the top-k",
    "saturation": "saturation (share of the top-k at the clip, or tied at the top across distinct images)",
}


def file_url(root: Path, base: Path, rel: str) -> str | None:
    """``/file/...`` URL of ``base/rel`` inside ``root``, checked lexically (the file route re-checks on disk)."""
    make = url_maker(root, base)
    return make(rel) if make is not None else None


def url_maker(root: Path, base: Path) -> Callable[[str], str | None] | None:
    """A fast ``rel -> /file/...`` for many paths relative to ``base`` (None when ``base`` is outside ``root``):
    string checks only (no ``..`` segment, not absolute), since the index builds tens of thousands."""
    try:
        prefix = base.relative_to(root).as_posix()
    except ValueError:
        return None
    head = "/file/" if prefix in ("", ".") else f"/file/{prefix}/"

    def make(rel: str) -> str | None:
        r = rel.replace("\\", "/")
        if not r or r.startswith("/") or ":" in r.split("/", 1)[0] or ".." in r.split("/"):
            return None
        return head + r.removeprefix("./")

    return make


@dataclass(frozen=True)
class Entry:
    """One of a map's top-k activations: the image, where, and its two tiles."""

    rank: int
    value: float
    score: float
    image: str
    label: int | None
    class_name: str | None
    box: tuple[int, int, int, int] | None
    projection: str | None
    patch: str | None


@dataclass(frozen=True)
class MapInfo:
    id: int
    entries: tuple[Entry, ...]
    top: float
    span: int
    saturation: float

    @property
    def thumb(self) -> str | None:
        return self.entries[0].projection if self.entries else None

    @property
    def thumb_patch(self) -> str | None:
        return self.entries[0].patch if self.entries else None

    def histogram(self) -> list[tuple[str, int]]:
        """Class names of the top-k and how often each occurs, most frequent first."""
        names = [e.class_name for e in self.entries if e.class_name]
        return Counter(names).most_common()


@dataclass(frozen=True)
class MinedLayer:
    name: str
    num_maps: int
    rule: str
    maps: tuple[MapInfo, ...]
    position: dict[int, int]
    saturated_maps: int | None = None
    rule_reason: str = ""
    ceiling: float | None = None
    _orders: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)

    def order(self, sort: str, descending: bool) -> list[int]:
        """Positions in :attr:`maps` sorted by ``sort`` (a key of :data:`SORTS`); ties by map number."""
        key = f"{sort}:{descending}"
        if key not in self._orders:
            if sort == "map":
                idx = list(range(len(self.maps)))
                self._orders[key] = idx[::-1] if descending else idx
            else:
                vals = [_sort_value(m, sort) for m in self.maps]
                sign = -1.0 if descending else 1.0
                self._orders[key] = sorted(range(len(self.maps)), key=lambda i: (sign * vals[i], self.maps[i].id))
        return self._orders[key]

    def orders(self, sort: str) -> bool:
        """Whether ``sort`` tells the maps apart (False: every map has the same key, or none has one)."""
        if sort == "map":
            return len(self.maps) > 1
        return len({_sort_value(m, sort) for m in self.maps}) > 1

    def get(self, m: int) -> MapInfo | None:
        i = self.position.get(m)
        return None if i is None else self.maps[i]


def _sort_value(m: MapInfo, sort: str) -> float:
    v = {"value": m.top, "classes": float(m.span), "saturation": m.saturation}.get(sort, float(m.id))
    return v if math.isfinite(v) else -math.inf


@dataclass(frozen=True)
class ClassMeans:
    """Per layer (n_maps, n_classes) mean activation per class; ``counts`` images per class."""

    layers: dict[str, np.ndarray]
    counts: np.ndarray
    names: list[str]

    def name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def mined_classes(self) -> int:
        """Classes with at least one mined image."""
        return int((self.counts > 0).sum())

    def top_maps(self, layer: str, c: int, n: int, by: str = "mean") -> list[tuple[int, float, float]]:
        """The ``n`` maps of ``layer`` with the highest mean for class ``c`` (``by="mean"``) or the
        highest selectivity (``by="selectivity"``: (mean_c - mean over classes) / std over classes).
        Returns (map, mean for c, selectivity)."""
        a = self.layers[layer]
        live = self.counts > 0
        mu = a[:, live].mean(1) if live.any() else a.mean(1)
        sd = a[:, live].std(1) if live.any() else a.std(1)
        sel = (a[:, c] - mu) / np.maximum(sd, 1e-12)
        score = np.nan_to_num(a[:, c] if by == "mean" else sel, nan=-np.inf)
        order = np.argsort(-score, kind="stable")[:n]
        return [(int(m), float(a[m, c]), float(sel[m])) for m in order]

    def top_classes(self, layer: str, m: int, n: int) -> list[tuple[int, float]]:
        """The ``n`` classes with the highest mean activation of map ``m`` (classes without images left out)."""
        row = self.layers[layer][m].astype(np.float64)
        row = np.where((self.counts > 0) & np.isfinite(row), row, -np.inf)
        order = np.argsort(-row, kind="stable")[:n]
        return [(int(c), float(row[c])) for c in order if np.isfinite(row[c])]


@dataclass(frozen=True)
class Mined:
    result: Result
    layers: dict[str, MinedLayer]
    class_names: list[str]
    class_means: ClassMeans | None
    input_size: int | None
    rule: str
    warnings: tuple[str, ...] = ()


def _int(v: Any, default: int | None = None) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _box(raw: Any) -> tuple[int, int, int, int] | None:
    """``[y0, x0, y1, x1]`` as ints, or None (missing or malformed)."""
    if not isinstance(raw, list) or len(raw) != 4:
        return None
    vals = [_int(v) for v in raw]
    return None if None in vals else tuple(vals)  # type: ignore[return-value]


def _class_of(raw: dict[str, Any], names: list[str]) -> tuple[int | None, str | None]:
    label = _int(raw.get("label"))
    if label is not None and label < 0:  # -1: unknown
        label = None
    name = raw.get("class_name", raw.get("class"))
    if isinstance(name, int) and label is None:
        label, name = name, None
    if not isinstance(name, str) or not name:
        if label is not None and 0 <= label < len(names):
            name = names[label]
        elif isinstance(raw.get("image"), str) and "/" in raw["image"]:
            name = PurePosixPath(raw["image"].replace("\\", "/")).parent.name or None  # ImageFolder: the folder
        else:
            name = None
    return label, name


def _entries(raw: Any, urls: Any, names: list[str]) -> tuple[Entry, ...]:
    out: list[Entry] = []
    for e in raw if isinstance(raw, list) else []:
        if not isinstance(e, dict):
            continue
        label, cname = _class_of(e, names)
        box_t = _box(e.get("box"))
        image = e.get("image", e.get("index", ""))
        value = _float(e.get("value"))
        score = _float(e.get("score")) if "score" in e else value
        out.append(Entry(
            rank=_int(e.get("rank"), len(out)) or 0, value=value, score=score,
            image=str(image), label=label, class_name=cname, box=box_t,
            projection=urls(e.get("projection")) if isinstance(e.get("projection"), str) else None,
            patch=urls(e.get("patch")) if isinstance(e.get("patch"), str) else None,
        ))
    return tuple(out)


def _map_info(m: int, raw: Any, urls: Any, names: list[str], ceiling: float | None) -> MapInfo:
    meta = raw if isinstance(raw, dict) else {}
    entries = _entries(meta.get("entries", meta.get("top")) if meta else raw, urls, names)
    scores = [e.score for e in entries if math.isfinite(e.score)]
    top = max(scores) if scores else math.nan  # strength: the pre-clip value where the activation clips
    classes = {e.class_name if e.class_name is not None else e.label for e in entries} - {None}
    sat = meta.get("saturation")
    if not isinstance(sat, (int, float)) or not math.isfinite(sat):
        flags = [bool(e.get("saturated")) for e in (raw if isinstance(raw, list) else meta.get("entries") or [])
                 if isinstance(e, dict) and "saturated" in e]
        sat = sum(flags) / len(flags) if flags else saturation_share(entries, ceiling)
    span = len(classes) if classes else len({e.image for e in entries})
    return MapInfo(m, entries, top, span, float(sat))


def saturation_share(entries: Sequence[Entry], ceiling: float | None) -> float:
    """Share of the top-k that saturates: at the clip's ``ceiling`` when the layer clips; otherwise
    the entries tied at the top value with at least one *other* image (a continuous layer's
    strongest entry is not tied with itself: 0 unless distinct images reach the same positive value)."""
    values = [(e.value, e.image) for e in entries if math.isfinite(e.value)]
    if not values:
        return 0.0
    if ceiling is not None:
        return sum(1 for v, _ in values if v >= ceiling) / len(values)
    peak = max(v for v, _ in values)
    tied = [img for v, img in values if v == peak]
    return len(tied) / len(values) if peak > 0 and len(set(tied)) > 1 else 0.0  # a dead map (all 0) is not saturated


def _load_class_means(path: Path, names: list[str], layers: dict[str, MinedLayer],
                      warnings: list[str]) -> ClassMeans | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:  # truncated or corrupt: BadZipFile, zlib.error, EOFError, ValueError, OSError...
        warnings.append(f"{path.parent.name}/{path.name} is damaged ({type(exc).__name__}: {exc}); the class pages "
                        "are off, the layer and unit pages still work (mine again to rewrite it)")
        return None
    counts = arrays.pop("__counts__", None)
    kept = {k: v.astype(np.float32) for k, v in arrays.items() if v.ndim == 2}
    if not kept:
        return None
    n = next(iter(kept.values())).shape[1]
    if counts is None or counts.shape != (n,):
        counts = np.ones(n, dtype=np.int64)
    kept = {k: v for k, v in kept.items() if v.shape[1] == n and (k not in layers or v.shape[0] >= layers[k].num_maps)}
    full = names if len(names) == n else [names[i] if i < len(names) else str(i) for i in range(n)]
    return ClassMeans(kept, counts.astype(np.int64), full)


def index_mine(root: Path, mine: Result) -> Mined:
    """Index a ``mine`` result of the run at ``root`` (see the module docstring for the format)."""
    data = mine.data
    warnings: list[str] = []
    raw_names = data.get("class_names")
    names = [str(n) for n in raw_names] if isinstance(raw_names, list) else []

    make = url_maker(root, mine.dir)

    def urls(rel: Any) -> str | None:
        return make(rel) if make is not None and isinstance(rel, str) else None

    default_rule = str(data.get("rule") or mine.params.get("rule") or "deconvnet")
    layers: dict[str, MinedLayer] = {}
    raw_layers = data.get("layers") if isinstance(data.get("layers"), dict) else {}
    for name, info in (raw_layers or {}).items():
        if not isinstance(info, dict):
            warnings.append(f"{mine.dir.name}/result.json: layer {str(name)[:60]!r} is not an object; it is left out")
            continue
        raw_maps = info.get("maps") if isinstance(info.get("maps"), dict) else {}
        maps = []
        ceiling = info.get("ceiling") if isinstance(info.get("ceiling"), (int, float)) else None
        for key, raw in (raw_maps or {}).items():
            m = _int(key)
            if m is not None and m >= 0:
                maps.append(_map_info(m, raw, urls, names, ceiling))
        maps.sort(key=lambda mi: mi.id)
        rule = info.get("rule")
        raw_sat = info.get("saturated_maps", info.get("saturated"))
        sat = len(raw_sat) if isinstance(raw_sat, list) else _int(raw_sat)
        layers[str(name)] = MinedLayer(
            str(name), _int(info.get("num_maps"), len(maps)) or len(maps), str(rule or default_rule),
            tuple(maps), {mi.id: i for i, mi in enumerate(maps)}, sat, str(info.get("rule_reason") or ""),
            float(ceiling) if ceiling is not None else None)
    cm_name = data.get("class_means") if isinstance(data.get("class_means"), str) else "class_means.npz"
    cm_path = mine.dir / str(cm_name)
    cm = _load_class_means(cm_path, names, layers, warnings) if cm_path.resolve().is_relative_to(mine.dir) else None
    if cm is not None and not names:
        names = cm.names
    return Mined(mine, layers, names, cm, _int(data.get("input_size")), default_rule, tuple(warnings))
