"""The page of a unit matching (``convlens compare``, :mod:`convlens.topk.compare`): ``/compare/<name>``.

Per layer pair: the share of A's units that persist in B (best-match r >= 0.5), the sorted
best-match r both ways as an inline SVG, and the tables of the matches (``a_to_b``, ``b_to_a``:
``{"unit", "match", "r"}``, strongest first), each unit linked to its unit page when its run is the
one this explorer serves. The start page links every ``compare`` result of the run here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from flask import Flask, abort, render_template

from convlens.io.manifest import Result
from convlens.topk.compare import PERSIST_R

__all__ = ["compare_results", "curve_view", "register_compare"]


def compare_results(run: Any) -> list[Result]:
    """The run's results of kind ``compare``."""
    return [r for r in run.results if r.kind == "compare"]


def curve_view(series: list[tuple[str, str, list[float | None]]], *, width: int = 420,
               height: int = 180) -> dict[str, Any]:
    """SVG geometry of sorted best-match r curves: per series (name, colour, r per unit; None: dead = 0)."""
    left, right, top, bottom = 40, 10, 8, 34
    w, h = width - left - right, height - top - bottom
    lo, hi = -0.1, 1.02

    def y(v: float) -> float:
        return round(top + h * (hi - min(max(v, lo), hi)) / (hi - lo), 2)

    lines = []
    for name, colour, rs in series:
        v = sorted((r if r is not None and math.isfinite(r) else 0.0 for r in rs), reverse=True)
        n = max(len(v), 1)
        pts = " ".join(f"{round(left + w * (i + 1) / n, 2)},{y(r)}" for i, r in enumerate(v))
        lines.append({"name": name, "colour": colour, "points": pts})
    yticks = [{"y": y(t), "v": t} for t in (0.0, 0.5, 1.0)]
    xticks = [{"x": round(left + w * f, 2), "v": f, "anchor": a}
              for f, a in ((0.0, "start"), (0.5, "middle"), (1.0, "end"))]
    return {"width": width, "height": height, "left": left, "top": top, "w": w, "h": h, "base": top + h,
            "lines": lines, "yticks": yticks, "xticks": xticks, "persist_y": y(PERSIST_R), "persist": PERSIST_R}


def _same(path: Any, mine_dir: Path | None) -> bool:
    if mine_dir is None or not isinstance(path, str):
        return False
    try:
        p = Path(path).resolve()
    except (OSError, ValueError):
        return False
    return p in (mine_dir, mine_dir / "acts")


def _rows(pairs: Any, link_unit: str | None, link_match: str | None) -> list[dict[str, Any]]:
    rows = []
    for p in pairs if isinstance(pairs, list) else []:
        if not isinstance(p, dict) or not isinstance(p.get("unit"), int):
            continue
        u, mt, r = p["unit"], p.get("match"), p.get("r")
        rows.append({"unit": u, "match": mt, "r": r,
                     "unit_url": f"{link_unit}/map/{u}" if link_unit else None,
                     "match_url": f"{link_match}/map/{mt}" if link_match and isinstance(mt, int) else None})
    # strongest first; r rounded as shown, so that units tied on the page are listed by number
    return sorted(rows, key=lambda x: (-(round(x["r"], 3) if isinstance(x["r"], float) else -2.0), x["unit"]))


def register_compare(app: Flask, state: Any) -> None:
    """Add ``/compare/<name>`` (module docstring)."""

    @app.route("/compare/", defaults={"name": "."})  # a browser turns /compare/. into /compare/
    @app.route("/compare/<path:name>")
    def compare_page(name: str) -> str:
        found = [r for r in compare_results(state.run()) if (r.name or ".") == (name or ".")]
        if not found:
            abort(404, f"no unit matching {name[:80]!r} in this run; see the list on the start page")
        r = found[0]
        mined = state.mined()
        mine_dir = mined.result.dir.resolve() if mined is not None else None
        a_here, b_here = _same(r.params.get("run_a"), mine_dir), _same(r.params.get("run_b"), mine_dir)
        raw = r.data.get("layers")
        layers: dict[str, Any] = raw if isinstance(raw, dict) else {}
        sections = []
        for la, d in layers.items():
            if not isinstance(d, dict):
                continue
            lb = str(d.get("layer_b", la))
            ua = f"/layer/{la}" if a_here and mined is not None and la in mined.layers else None
            ub = f"/layer/{lb}" if b_here and mined is not None and lb in mined.layers else None
            a_to_b, b_to_a = _rows(d.get("a_to_b"), ua, ub), _rows(d.get("b_to_a"), ub, ua)
            curve = curve_view([(f"A {la} \u2192 B", "#1f77b4", [x["r"] for x in a_to_b]),
                                (f"B {lb} \u2192 A", "#ff7f0e", [x["r"] for x in b_to_a])])
            sections.append({"layer_a": la, "layer_b": lb, "images": d.get("images"),
                             "share": d.get("persisting_share"), "curve": curve, "a_to_b": a_to_b, "b_to_a": b_to_a})
        figures = [{"src": state.url(f.path), "caption": f.caption} for f in r.figures]
        return render_template("compare.html", r=r, sections=sections, persist=PERSIST_R,
                               figures=[f for f in figures if f["src"]], a_here=a_here, b_here=b_here,
                               run_a=Path(str(r.params.get("run_a", "A"))).name,
                               run_b=Path(str(r.params.get("run_b", "B"))).name)
