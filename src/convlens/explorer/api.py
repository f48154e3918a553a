"""The explorer's JSON API and export: what a unit page and a layer page show, as data.

``GET /api/unit/<layer>/<map>``: ``{"layer", "map", "images", "top", "bottom", "quantiles",
"histogram", "label", "classes", "table"}`` where ``top`` are the mined top-k (with their
``projection``/``patch`` URLs), ``bottom`` the k weakest images, ``quantiles`` k images around
each quantile keyed ``"0.99"``, ``"0.9"``, ``"0.5"``, ``"0.1"``, ``histogram`` ``{"counts",
"edges"}``, ``label`` ``{"name", "score", "class", "good"}`` (``name`` null: no good label),
``classes`` the classes with the highest mean (with selectivity); every example has ``image``
(its path in the dataset) and ``value``. Definitions: :mod:`convlens.topk.unitstats`. A run mined
before activation tables existed answers with ``"table": false`` and only ``top``.

``GET /api/layer/<layer>``: ``{"layer", "num_maps", "maps": [{"map", "label", "top"}]}``.

``GET /api/archive``: the mined run's data as one zip, streamed: ``result.json``,
``class_means.npz``, ``topk.pt``, the per-map JSON (``units/<layer>/<map>.json``) and the
activation tables (``acts/``). The PNG tiles are left out: they are large and ``convlens mine``
draws them again from the same data.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify

from convlens.topk.acttable import ActTable
from convlens.topk.unitdata import unit_range

__all__ = ["archive_files", "register_api"]


def _error(code: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), code


def _top(info: Any, raw: Any, names: list[str] | None) -> list[dict[str, Any]]:
    """The mined top-k of a map: the index's, then the explorer's entry fields (tile URLs)."""
    raw = raw.get("entries") if isinstance(raw, dict) else raw
    raw = raw if isinstance(raw, list) and len(raw) == len(info.entries) else [{}] * len(info.entries)
    out = []
    for e, r in zip(info.entries, raw, strict=True):
        index = r.get("index") if isinstance(r, dict) and isinstance(r.get("index"), int) else None
        image = names[index] if names is not None and index is not None and 0 <= index < len(names) else e.image
        out.append({"rank": e.rank, "index": index, "image": image, "value": e.value, "score": e.score,
                    "label": e.label, "class": e.class_name or "", "projection": e.projection, "patch": e.patch})
    return out


def _raw_map(mined: Any, layer: str, m: int) -> Any:
    layers = mined.result.data.get("layers")
    maps = layers.get(layer, {}).get("maps") if isinstance(layers, dict) and isinstance(layers.get(layer), dict) \
        else None
    return maps.get(str(m)) if isinstance(maps, dict) else None


def archive_files(mine_dir: Path) -> list[tuple[Path, str]]:
    """The files of the archive: (path, name in the zip), in a fixed order."""
    out = []
    for name in ("result.json", "class_means.npz", "topk.pt"):
        if (mine_dir / name).is_file():
            out.append((mine_dir / name, name))
    for p in sorted((mine_dir / "units").glob("*/*.json")) + sorted((mine_dir / "acts").glob("*")):
        if p.is_file() and not p.name.startswith("."):
            out.append((p, p.relative_to(mine_dir).as_posix()))
    return out


class _Sink:
    """A write-only stream the zip writes into; the route drains it between chunks."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, b: bytes) -> int:
        self.chunks.append(bytes(b))
        return len(b)

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def _zip_stream(files: list[tuple[Path, str]], chunk: int = 1 << 20) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:  # type: ignore[call-overload]
        for path, name in files:
            with open(path, "rb") as src, zf.open(name, "w", force_zip64=True) as dst:
                while block := src.read(chunk):
                    dst.write(block)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()


def register_api(app: Flask, state: Any) -> None:
    """Add the ``/api`` routes (module docstring) to the explorer's app (``state.tables``: the
    :class:`~convlens.explorer.unitrange.TableCache` the pages read too)."""
    tables = state.tables

    def layer_of(layer: str) -> tuple[Any, Any, ActTable | None]:
        mined = state.mined()
        if mined is None:
            return None, None, None
        return mined, mined.layers.get(layer), tables.table(mined.result.dir)

    @app.route("/api/unit/<layer>/<int:m>")
    def api_unit(layer: str, m: int) -> Any:
        mined, ml, table = layer_of(layer)
        if mined is None:
            return _error(404, "this run has no mined feature maps; run 'convlens mine' into it")
        if ml is None and (table is None or layer not in table.layers):
            return _error(404, f"no mined layer {layer!r}; mined: {', '.join(mined.layers)}")
        n_maps = table.layers[layer] if table is not None and layer in table.layers else ml.num_maps
        if not 0 <= m < n_maps:
            return _error(404, f"{layer} has maps 0..{n_maps - 1}, not {m}")
        info = ml.get(m) if ml is not None else None
        has_table = table is not None and layer in table.layers
        names = table.image_names() if has_table else None  # type: ignore[union-attr]
        doc: dict[str, Any] = {"layer": layer, "map": m, "bottom": [], "quantiles": {}, "histogram": None,
                               "top": _top(info, _raw_map(mined, layer, m), names) if info is not None else [],
                               "classes": [], "label": {"name": None, "score": None, "class": -1, "good": False},
                               "table": has_table}
        if has_table:
            doc.update(unit_range(table, layer, m, mined.class_names))  # type: ignore[arg-type]
            doc["label"] = tables.labels(table, layer, mined.class_names).label(m)  # type: ignore[arg-type]
        return jsonify(doc)

    @app.route("/api/layer/<layer>")
    def api_layer(layer: str) -> Any:
        mined, ml, table = layer_of(layer)
        if mined is None or (ml is None and (table is None or layer not in table.layers)):
            return _error(404, f"no mined layer {layer!r}")
        has_table = table is not None and layer in table.layers
        n_maps = table.layers[layer] if has_table else ml.num_maps  # type: ignore[union-attr]
        labels = tables.labels(table, layer, mined.class_names) if has_table else None  # type: ignore[arg-type]
        maps = []
        for m in range(n_maps):
            info = ml.get(m) if ml is not None else None
            maps.append({"map": m, "label": labels.label(m) if labels is not None else None,
                         "top": info.top if info is not None and info.top == info.top else None})
        return jsonify({"layer": layer, "num_maps": n_maps, "table": has_table, "maps": maps})

    @app.route("/api/archive")
    def api_archive() -> Any:
        mined = state.mined()
        if mined is None:
            return _error(404, "this run has no mined feature maps to download")
        files = archive_files(mined.result.dir)
        name = f"{state.root.name}-{mined.result.dir.name}.zip"
        return Response(_zip_stream(files), mimetype="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
