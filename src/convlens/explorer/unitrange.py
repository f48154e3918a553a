"""A unit's whole range on its page, and labels on the layer page, from the run's activation table.

The unit page's "whole range" section: range strips (the examples around the quantiles 0.99, 0.9,
0.5, 0.1 and the bottom k, each with its dataset image and value), the histogram of the map's
per-image maxima (an inline SVG with the top-k threshold marked) and the map's label (class and
AUROC, or "no good label" with the best score). The numbers are :mod:`convlens.topk.unitdata`'s, the
functions the JSON API serves (:mod:`convlens.explorer.api`): one source.

Images: ``/dataset/image/<index>?s=SIDE`` serves row ``index`` of the table's ``images.json`` (the
only files it serves: names the run recorded, relative to the dataset folder ``mine`` recorded,
resolved inside it), as the centre square resized to ``SIDE`` px with an antialiased filter (the
size the page shows it at; never a browser downscale).
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, abort, request

from convlens.io.manifest import inside
from convlens.topk.acttable import ActTable, load_table
from convlens.topk.unitdata import layer_labels, map_column, unit_range
from convlens.topk.unitstats import UnitLabels

__all__ = ["LABEL_SORT", "NO_TABLE", "THUMB_SIDES", "TableCache", "dataset_folder", "histogram_view", "label_order",
           "label_text", "layer_labels_of", "range_view", "register_dataset_images", "unit_range_of"]

THUMB_SIDES = (48, 64, 96, 128, 192, 256)
"""Sides (px) the image route renders; a page asks for the one it shows (and twice it for dense screens)."""

STRIP_SIDE = 64


class TableCache:
    """The mined run's activation table and its layers' labels, reloaded when ``table.json`` changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, float] | None = None
        self._table: ActTable | None = None
        self._labels: dict[str, UnitLabels] = {}
        self._names: list[str] | None = None

    def table(self, mine_dir: Path) -> ActTable | None:
        """The table of the mining run in ``mine_dir`` (None: it has none, or an unreadable one)."""
        meta = mine_dir / "acts" / "table.json"
        try:
            key = (str(meta), meta.stat().st_mtime)
        except OSError:
            return None
        with self._lock:
            if key != self._key:
                try:
                    self._table, self._labels, self._names, self._key = load_table(meta.parent), {}, None, key
                except ValueError:
                    return None
            return self._table

    def labels(self, table: ActTable, layer: str, names: list[str]) -> UnitLabels:
        """Every map's label of ``layer`` (computed once per table)."""
        with self._lock:
            if layer not in self._labels:
                self._labels[layer] = layer_labels(table, layer, names)
            return self._labels[layer]

    def image_names(self, table: ActTable) -> list[str]:
        """The table's ``images.json`` (read once per table)."""
        with self._lock:
            if self._names is None:
                self._names = table.image_names()
            return self._names


def label_text(label: dict[str, Any], class_names: Sequence[str]) -> str:
    """``"ketch (AUROC 0.93)"``, or ``"no good label (best: ketch, AUROC 0.61)"``."""
    score = label.get("score")
    s = f"AUROC {score:.2f}" if isinstance(score, float) else "no AUROC"
    if label.get("name"):
        return f"{label['name']} ({s})"
    c = label.get("class", -1)
    best = class_names[c] if isinstance(c, int) and 0 <= c < len(class_names) else None
    if not best:
        return "no good label"
    chance = isinstance(score, float) and score >= float(label.get("threshold", 0.75))
    return f"no good label (best: {best}, {s}{': could be chance with this few images per class' if chance else ''})"


def histogram_view(counts: Sequence[int], edges: Sequence[float], threshold: float | None, *,
                   width: int = 420, height: int = 150) -> dict[str, Any]:
    """Geometry of the histogram's SVG: bars, the top-k threshold's x, axis ticks (all in px)."""
    left, right, top, bottom = 44, 10, 8, 34
    w, h = width - left - right, height - top - bottom
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo if hi > lo else 1.0
    peak = max(max(counts, default=0), 1)
    bw = w / max(len(counts), 1)
    bars = [{"x": round(left + i * bw, 2), "w": round(max(bw - 1, 0.5), 2), "y": round(top + h - h * n / peak, 2),
             "h": round(h * n / peak, 2), "n": int(n), "lo": float(edges[i]), "hi": float(edges[i + 1])}
            for i, n in enumerate(counts)]
    tx = None
    if threshold is not None and np.isfinite(threshold):
        tx = round(left + w * min(max((threshold - lo) / span, 0.0), 1.0), 2)
    ticks = [{"x": round(left + w * f, 2), "v": lo + span * f} for f in (0.0, 0.5, 1.0)]
    return {"width": width, "height": height, "left": left, "top": top, "w": w, "h": h, "base": top + h,
            "bars": bars, "peak": peak, "tx": tx, "threshold": threshold, "ticks": ticks}


def range_view(cache: TableCache, table: ActTable, layer: str, m: int, class_names: Sequence[str],
               k_top: int) -> dict[str, Any]:
    """What the unit page's "whole range" section shows for map ``m`` (see the module docstring)."""
    doc = unit_range(table, layer, m, class_names)
    x, _ = map_column(table, layer, m)
    finite = np.sort(x[np.isfinite(x)])[::-1]
    threshold = float(finite[k_top - 1]) if 0 < k_top <= len(finite) else None

    def strip(title: str, key: str, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"title": title, "key": key, "examples": [
            {**e, "src": f"/dataset/image/{e['index']}?s={STRIP_SIDE}",
             "src2": f"/dataset/image/{e['index']}?s={2 * STRIP_SIDE}",
             "full": f"/dataset/image/{e['index']}?s={THUMB_SIDES[-1]}",
             "short": e["image"].rsplit("/", 1)[-1]} for e in examples]}

    strips = [strip(f"around the {float(q):.0%} quantile", q, ex) for q, ex in doc["quantiles"].items()]
    strips.append(strip(f"the bottom {len(doc['bottom'])}", "bottom", doc["bottom"]))
    label = cache.labels(table, layer, list(class_names)).label(m)
    return {"images": doc["images"], "strips": strips, "side": STRIP_SIDE, "classes": doc["classes"],
            "hist": histogram_view(doc["histogram"]["counts"], doc["histogram"]["edges"], threshold),
            "k_top": k_top, "label": label, "label_text": label_text(label, class_names)}


def dataset_folder(params: dict[str, Any]) -> Path | None:
    """The image folder a ``mine`` run read (``params.source``; the split's subfolder where it has
    one, as :func:`convlens.images.sources.open_raw` picks it), or None (a named dataset, or no record)."""
    src = params.get("source") if isinstance(params, dict) else None
    if not isinstance(src, dict) or not isinstance(src.get("dataset"), str):
        return None
    root = Path(src["dataset"])
    if not root.is_absolute() or not root.is_dir():
        return None
    split = str(src.get("split") or "train")
    for sub in ((split,) if split == "train" else (split, "test", "val")):
        if (root / sub).is_dir():
            return root / sub
    return root


def _thumbnail(path: Path, side: int) -> bytes:
    """The centre square of the image at ``path``, resized to ``side`` px (antialiased), as PNG."""
    from PIL import Image

    from convlens.images.decode import open_image
    from convlens.images.sources import resize_center_crop

    img = open_image(path, target_size=side)
    t = resize_center_crop(img, side)  # (3, side, side) in [0, 1]
    arr = (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def register_dataset_images(app: Flask, state: Any) -> None:
    """Add ``/dataset/image/<index>`` (module docstring); ``state.tables`` is the :class:`TableCache`."""
    cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
    lock = threading.Lock()

    @app.route("/dataset/image/<int:index>")
    def dataset_image(index: int) -> Any:
        raw = request.args.get("s", str(STRIP_SIDE))
        if not raw.isdigit() or int(raw) not in THUMB_SIDES:
            abort(400, f"s must be one of {', '.join(map(str, THUMB_SIDES))} (px), got {raw[:20]!r}")
        side = int(raw)
        mined = state.mined()
        table = state.tables.table(mined.result.dir) if mined is not None else None
        if table is None:
            abort(404, "this run has no activation table, so no recorded dataset images to show")
        names = state.tables.image_names(table)
        if not 0 <= index < len(names) or names[index].startswith("dataset:"):
            abort(404, f"no recorded dataset image {index}")
        folder = dataset_folder(mined.result.params)
        target = inside(folder, names[index]) if folder is not None else None
        if target is None or not target.is_file():
            abort(404, f"the dataset image {names[index][:120]!r} is not where this run read it; "
                       "the dataset folder moved or was removed")
        key = (str(target), side, int(target.stat().st_mtime))
        with lock:
            png = cache.get(key)
        if png is None:
            try:
                png = _thumbnail(target, side)
            except (ValueError, OSError) as exc:
                abort(404, f"cannot decode {names[index][:120]!r}: {exc}")
            with lock:
                cache[key] = png
                while len(cache) > 512:
                    cache.popitem(last=False)
        return Response(png, mimetype="image/png", headers={"Cache-Control": "max-age=3600"})


LABEL_SORT = "label score (AUROC of the map's best class)"
NO_TABLE = ("This run was mined before activation tables existed, so it has no whole range, histogram or "
            "labels: mine it again with this version of convlens.")


def layer_labels_of(state: Any, mined: Any, layer: str) -> tuple[UnitLabels | None, str]:
    """The layer's labels from the run's table, or None and the one line that says why not."""
    table = state.tables.table(mined.result.dir)
    if table is None:
        return None, NO_TABLE
    if layer not in table.layers:
        return None, f"The activation table has no layer {layer} (it has {', '.join(table.layers)})."
    return state.tables.labels(table, layer, list(mined.class_names)), ""


def unit_range_of(state: Any, mined: Any, layer: str, m: int, k_top: int) -> tuple[dict[str, Any] | None, str]:
    """:func:`range_view` of map ``m`` from the run's table, or None and the one line that says why not."""
    table = state.tables.table(mined.result.dir)
    if table is None:
        return None, NO_TABLE
    if layer not in table.layers or not 0 <= m < table.layers[layer]:
        return None, f"The activation table has no map {m} of {layer}."
    view = range_view(state.tables, table, layer, m, mined.class_names, k_top)
    if dataset_folder(mined.result.params) is None:
        view["no_images"] = ("The run does not record an image folder it read (a named data set, or an old "
                             "record), so the examples are listed without their images.")
    return view, ""


def label_order(labels: UnitLabels, ids: Sequence[int], descending: bool) -> tuple[list[int], bool]:
    """Positions of the maps ``ids`` by label score (maps without a score last; ties by map number),
    and whether the score tells them apart at all."""
    scores = [float(labels.scores[i]) if 0 <= i < len(labels.scores) else float("nan") for i in ids]
    sign = -1.0 if descending else 1.0
    order = sorted(range(len(ids)), key=lambda p: (not np.isfinite(scores[p]),
                                                    sign * scores[p] if np.isfinite(scores[p]) else 0.0, ids[p]))
    return order, len({s for s in scores if np.isfinite(s)}) > 1
