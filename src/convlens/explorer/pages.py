"""Browsing pages of the explorer: every map of a layer, a unit, classes to units.

``/layer/<layer>`` (all maps, paginated, sortable), ``/layer/<layer>/map/<m>`` (the unit page:
top-k with rule and values, the classes of its images, its receptive field, classes that drive it,
evolution, neighbours, previous/next in the order it was reached from; projections a map lacks are
made on first view: ``/layer/<layer>/map/<m>/projections``, see :mod:`convlens.explorer.ondemand`),
``/layer/<layer>/map/<m>/unit/<r>`` (one entry's projection and patch at full size), ``/jump?to=layer:map``,
``/classes`` and ``/class/<c>`` (the maps that respond most to class c, from ``class_means.npz``).
"""
from __future__ import annotations

import math
import time
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlencode

from flask import Flask, abort, jsonify, redirect, render_template, request

from convlens.explorer.ondemand import entry_json
from convlens.explorer.runindex import SORTS, MapInfo, Mined, MinedLayer
from convlens.explorer.unitrange import LABEL_SORT, label_order, label_text, layer_labels_of, unit_range_of

__all__ = ["PER_PAGE", "register_pages"]

PER_PAGE = 120
MAX_PER_PAGE = 600


def _mined(state: Any) -> Mined:
    mined = state.mined()
    if mined is None:
        abort(404, "this run has no mined feature maps yet: run 'convlens mine ... --out RUN/mine'")
    return mined


def _layer(mined: Mined, layer: str) -> MinedLayer:
    found = mined.layers.get(layer)
    if found is None:
        abort(404, f"no mined layer {layer[:80]!r} in this run; mined: {', '.join(list(mined.layers)[:12])}")
    return found


def _sort_args() -> tuple[str, bool]:
    sort = request.args.get("sort", "map")
    if sort not in SORTS and sort != "label":
        abort(400, f"sort must be one of {', '.join(SORTS)}, label, got {sort[:40]!r}")
    order = request.args.get("order", "asc" if sort == "map" else "desc")
    if order not in ("asc", "desc"):
        abort(400, f"order must be asc or desc, got {order[:40]!r}")
    return sort, order == "desc"


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        abort(400, f"{name} must be an integer, got {raw[:40]!r}")
    return max(lo, min(hi, v))


def _query(sort: str, desc: bool, **extra: Any) -> str:
    args: dict[str, Any] = {}
    if sort != "map" or desc:
        args = {"sort": sort, "order": "desc" if desc else "asc"}
    args.update({k: v for k, v in extra.items() if v is not None})
    return ("?" + urlencode(args)) if args else ""


def _order(state: Any, mined: Mined, ml: MinedLayer, sort: str, desc: bool) -> tuple[list[int], bool]:
    """Positions of the layer's maps in ``sort`` order, and whether that sort tells them apart (a
    ``label`` sort of a run without labels keeps map order and says so)."""
    if sort != "label":
        return ml.order(sort, desc), sort == "map" or ml.orders(sort)
    labels, _ = layer_labels_of(state, mined, ml.name)
    if labels is None:
        return ml.order("map", False), False
    return label_order(labels, [mi.id for mi in ml.maps], desc)


def _short_image(image: str) -> str:
    """File name of an image path (never a machine's absolute path), or the text as given."""
    return PurePosixPath(image.replace("\\", "/")).name or image


def _tile(mi: MapInfo) -> dict[str, Any]:
    return {"id": mi.id, "thumb": mi.thumb, "patch": mi.thumb_patch, "top": mi.top, "span": mi.span,
            "saturation": mi.saturation, "k": len(mi.entries)}


def _rf(mi: MapInfo, input_size: int | None) -> dict[str, Any] | None:
    boxes = [(e.rank, e.box) for e in mi.entries if e.box is not None]
    if not boxes:
        return None
    side = input_size or max(max(b[2], b[3]) for _, b in boxes)
    y0, x0, y1, x1 = boxes[0][1]  # type: ignore[misc]
    sizes = sorted({(b[2] - b[0], b[3] - b[1]) for _, b in boxes})
    return {"side": side, "boxes": [{"rank": r, "y": b[0], "x": b[1], "h": b[2] - b[0], "w": b[3] - b[1]}  # type: ignore[index]
                                    for r, b in boxes],
            "size": f"{max(s[0] for s in sizes)}x{max(s[1] for s in sizes)}", "top": (y0, x0, y1, x1)}


def _evolution(state: Any, layer: str, m: int) -> tuple[list[dict[str, Any]], str]:
    """The layer's Fig. 4 grid (rows = tracked maps, columns = epochs) and where map ``m`` is in it."""
    evo = state.run().first("evolution")
    if evo is None:
        return [], ""
    layers: dict[str, Any] = evo.data["layers"] if isinstance(evo.data.get("layers"), dict) else {}
    info: dict[str, Any] = layers[layer] if isinstance(layers.get(layer), dict) else {}
    tracked = [str(v) for v in info.get("maps", [])] if isinstance(info.get("maps"), list) else []
    figures = [{"label": f.caption, "url": state.url(f.path)} for f in evo.figures if f.group == layer]
    figures = [f for f in figures if f["url"]]
    if not figures:
        return [], ""
    if str(m) in tracked:
        note = f"Map {m} is the row labelled {layer}:{m}."
    else:
        note = (f"Map {m} was not among the maps tracked over training ({', '.join(tracked) or 'none'}); "
                "shown for context.")
    return figures, note


def register_pages(app: Flask, state: Any) -> None:
    """Add the browsing routes to the explorer's ``app``."""

    @app.route("/layer/<layer>")
    def layer_page(layer: str) -> str:
        mined = _mined(state)
        ml = _layer(mined, layer)
        sort, desc = _sort_args()
        find = request.args.get("label", "").strip()[:80] or None
        labels, no_labels = layer_labels_of(state, mined, layer)
        order, tells = _order(state, mined, ml, sort, desc)
        if find is not None and labels is not None:
            order = [i for i in order if find.lower() in (labels.names[ml.maps[i].id] or "").lower()]
        per = _int_arg("per", PER_PAGE, 12, MAX_PER_PAGE)
        pages = max(1, math.ceil(len(order) / per))
        page = _int_arg("page", 1, 1, pages)
        shown = state.projector.shown
        tiles = [_tile(shown(mined, layer, ml.maps[i])) for i in order[(page - 1) * per:page * per]]
        if labels is not None:
            for t in tiles:
                lab = labels.label(t["id"])
                t["label"], t["label_text"] = lab, label_text(lab, mined.class_names)
        per_q = None if per == PER_PAGE else per
        at_page = {p: f"/layer/{layer}{_query(sort, desc, page=p, per=per_q, label=find)}" for p in range(1, pages + 1)}
        links = {"prev": at_page.get(page - 1), "next": at_page.get(page + 1)}
        names = {**SORTS, **({"label": LABEL_SORT} if labels is not None else {})}
        sorts = [{"key": k, "label": v, "url": f"/layer/{layer}{_query(k, k != 'map', label=find)}", "on": k == sort}
                 for k, v in names.items()]
        flip = f"/layer/{layer}{_query(sort, not desc, label=find)}"
        page_urls = list(at_page.items())
        return render_template("layer.html", layer=ml, tiles=tiles, sort=sort, desc=desc, sorts=sorts, flip=flip,
                               page=page, pages=pages, page_urls=page_urls, links=links,
                               unit_query=_query(sort, desc), first=(page - 1) * per + 1,
                               sort_name=names.get(sort, LABEL_SORT), find=find, found=len(order),
                               has_labels=labels is not None, no_labels=no_labels,
                               unordered=sort != "map" and not tells,
                               has_classes=mined.class_means is not None and layer in mined.class_means.layers)

    @app.route("/layer/<layer>/map/<int:m>")
    def map_page(layer: str, m: int) -> str:
        mined = _mined(state)
        ml = _layer(mined, layer)
        mi = ml.get(m)
        if mi is None:
            abort(404, f"no feature map {m} of layer {layer!r} was mined in this run "
                       f"(maps {ml.maps[0].id}..{ml.maps[-1].id})" if ml.maps else f"layer {layer!r} has no maps")
        mi = state.projector.shown(mined, layer, mi)
        pending = mi.thumb is None and bool(mi.entries) and mined.result.params.get("source") is not None
        sort, desc = _sort_args()
        order, _ = _order(state, mined, ml, sort, desc)
        at = order.index(ml.position[m])
        q = _query(sort, desc)
        prev_id = ml.maps[order[at - 1]].id if at > 0 else None
        next_id = ml.maps[order[at + 1]].id if at + 1 < len(order) else None
        pos = ml.position[m]
        neighbours = [_tile(state.projector.shown(mined, layer, ml.maps[i]))
                      for i in range(max(0, pos - 4), min(len(ml.maps), pos + 5)) if i != pos]
        cm = mined.class_means
        drivers = []
        if cm is not None and layer in cm.layers and m < cm.layers[layer].shape[0]:
            top = cm.top_classes(layer, m, 10)
            peak = max((v for _, v in top), default=0.0)
            drivers = [{"c": c, "name": cm.name(c), "value": v, "share": (v / peak) if peak > 0 else 0.0,
                        "n": int(cm.counts[c])} for c, v in top]
        hist = mi.histogram()
        entries = [{"e": e, "short": _short_image(e.image)} for e in mi.entries]
        evolution, note = _evolution(state, layer, m)
        whole, no_range = unit_range_of(state, mined, layer, m, len(mi.entries))
        return render_template(
            "map.html", layer=ml, mi=mi, entries=entries, pending=pending,
            projections_url=f"/layer/{layer}/map/{m}/projections", hist=hist,
            hist_max=max((n for _, n in hist), default=1),
            rf=_rf(mi, mined.input_size), drivers=drivers, neighbours=neighbours, q=q, sort=sort, desc=desc,
            prev_url=f"/layer/{layer}/map/{prev_id}{q}" if prev_id is not None else None,
            next_url=f"/layer/{layer}/map/{next_id}{q}" if next_id is not None else None,
            position=at + 1, total=len(order), sort_label=SORTS.get(sort, LABEL_SORT), evolution=evolution,
            evolution_note=note, whole=whole, no_range=no_range,
            class_index={n: i for i, n in enumerate(mined.class_names)} if cm is not None else {},
            back=f"/layer/{layer}{_query(sort, desc, page=at // PER_PAGE + 1 if at >= PER_PAGE else None)}")

    @app.route("/layer/<layer>/map/<int:m>/projections")
    def map_projections(layer: str, m: int) -> Any:
        """The map's top-k projections as JSON, computed now when nothing made them yet."""
        mined = _mined(state)
        ml = _layer(mined, layer)
        mi = ml.get(m)
        if mi is None:
            abort(404, f"no feature map {m} of layer {layer!r} was mined in this run")
        t = time.perf_counter()
        try:
            done, computed = state.projector.ensure(mined, layer, mi)
        except (ValueError, FileNotFoundError) as exc:
            return jsonify({"error": str(exc)}), 409
        return jsonify({"layer": layer, "map": m, "computed": computed,
                        "seconds": round(time.perf_counter() - t, 3),
                        "entries": [entry_json(e) for e in done.entries]})

    @app.route("/layer/<layer>/map/<int:m>/unit/<int:r>")
    def unit_pair(layer: str, m: int, r: int) -> str:
        """One top-k entry's projection and image patch at their full size."""
        mined = _mined(state)
        ml = _layer(mined, layer)
        mi = ml.get(m)
        if mi is None or not 0 <= r < len(mi.entries):
            abort(404, f"no entry {r} of map {m} of layer {layer!r} in this run")
        mi = state.projector.shown(mined, layer, mi)
        return render_template("pair.html", layer=ml, mi=mi, e=mi.entries[r], short=_short_image(mi.entries[r].image))

    @app.route("/jump")
    def jump() -> Any:
        mined = _mined(state)
        text = request.args.get("to", "").strip()
        layer, sep, m = text.rpartition(":")
        if not sep or not m.isdigit() or not layer:
            abort(400, f"type layer:map, e.g. {next(iter(mined.layers), 'conv5')}:12 (got {text[:60]!r})")
        ml = _layer(mined, layer)
        if ml.get(int(m)) is None:
            abort(404, f"layer {layer!r} has no mined map {m}")
        return redirect(f"/layer/{layer}/map/{int(m)}", code=303)

    @app.route("/classes")
    def classes_page() -> str:
        mined = _mined(state)
        cm = mined.class_means
        if cm is None:
            abort(404, "this run has no per-class activations (class_means.npz); mine it again with a "
                       "current convlens")
        rows = [{"c": c, "name": cm.name(c), "n": int(cm.counts[c])} for c in range(cm.num_classes)]
        return render_template("classes.html", rows=rows, layers=[n for n in mined.layers if n in cm.layers],
                               mined_classes=cm.mined_classes)

    @app.route("/class/<int:c>")
    def class_page(c: int) -> str:
        mined = _mined(state)
        cm = mined.class_means
        if cm is None:
            abort(404, "this run has no per-class activations (class_means.npz)")
        if not 0 <= c < cm.num_classes:
            abort(404, f"no class {c}; classes are 0..{cm.num_classes - 1} (see /classes)")
        by = request.args.get("by", "mean")
        if by not in ("mean", "selectivity"):
            abort(400, f"by must be mean or selectivity, got {by[:40]!r}")
        n = _int_arg("n", 12, 1, 64)
        sections = []
        for layer, ml in mined.layers.items():
            if layer not in cm.layers or cm.counts[c] == 0:  # no image of the class: no means to rank by
                continue
            rows = []
            for m, mean, sel in cm.top_maps(layer, c, n, by):
                mi = ml.get(m)
                mi = state.projector.shown(mined, layer, mi) if mi is not None else None
                rows.append({"m": m, "mean": mean, "sel": sel, "thumb": mi.thumb if mi else None,
                             "patch": mi.thumb_patch if mi else None, "mined": mi is not None})
            sections.append({"layer": layer, "rows": rows})
        return render_template("class.html", c=c, name=cm.name(c), count=int(cm.counts[c]), by=by,
                               sections=sections, prev_c=c - 1 if c > 0 else None,
                               next_c=c + 1 if c + 1 < cm.num_classes else None)
