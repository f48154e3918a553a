"""Reading feature-visualization folders without torch (for the explorer's pages and the report).

The layout is :mod:`convlens.featvis.store`'s: ``DIR/<layer>/unit_<u>.png`` and
``DIR/<layer>/unit_<u>.json`` (``{"layer", "unit", "settings", "images", "activation", "peak",
"top1", "ratio"}``), written by ``convlens featvis --out DIR`` (which adds ``DIR/result.json``) and
by the explorer into a run's cache ``MINE/featvis`` (``MINE`` is the ``convlens mine`` output, whose
``topk.pt`` gives the sanity ratio), which has no ``result.json``: :func:`cache_results` turns such
a cache into ``featvis`` results for the report.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from convlens.io.manifest import Figure, Result, Table

__all__ = ["CACHE_DIR", "cache_folders", "cache_results", "caption", "read_layer", "read_unit", "settings_text"]

CACHE_DIR = "featvis"  # the same name as convlens.featvis.store.CACHE_DIR (tested), kept here torch-free
_UNIT_JSON = re.compile(r"unit_(\d+)\.json")


def _numbers(value: Any) -> list[float] | None:
    if not isinstance(value, list) or not value:
        return None
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def read_unit(folder: Path, layer: str, unit: int) -> dict[str, Any] | None:
    """The record of ``unit`` in ``folder/<layer>``, or None when it is missing, unreadable or its
    images are gone. ``activation``, ``peak`` and ``ratio`` are lists of finite numbers (``ratio``
    may be None: no mined run), ``images`` plain file names next to the JSON."""
    path = folder / layer / f"unit_{int(unit)}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        return None
    images = doc.get("images")
    if not isinstance(images, list) or not images or not all(
            isinstance(n, str) and n and "/" not in n and "\\" not in n and n not in (".", "..") for n in images):
        return None
    if not all((path.parent / n).is_file() for n in images):
        return None
    act, peak = _numbers(doc.get("activation")), _numbers(doc.get("peak"))
    if act is None or peak is None:
        return None
    top1 = doc.get("top1")
    return {"layer": layer, "unit": int(unit), "settings": doc["settings"], "images": images, "activation": act,
            "peak": peak, "top1": float(top1) if isinstance(top1, (int, float)) and math.isfinite(top1) else None,
            "ratio": _numbers(doc.get("ratio")), "folder": path.parent}


def read_layer(folder: Path, layer: str) -> dict[int, dict[str, Any]]:
    """Every readable unit record of ``folder/<layer>``, by unit."""
    found: dict[int, dict[str, Any]] = {}
    try:
        names = sorted(p.name for p in (folder / layer).iterdir())
    except OSError:
        return found
    for name in names:
        match = _UNIT_JSON.fullmatch(name)
        if match:
            rec = read_unit(folder, layer, int(match.group(1)))
            if rec is not None:
                found[rec["unit"]] = rec
    return dict(sorted(found.items()))


def settings_text(settings: dict[str, Any]) -> str:
    """``128 steps, 128 px, seed 0, channel objective`` (and ``, 3 diverse images`` when K > 1)."""
    parts = [f"{settings.get('steps', '?')} steps", f"{settings.get('size', '?')} px",
             f"seed {settings.get('seed', '?')}", f"{settings.get('objective', 'channel')} objective"]
    if isinstance(settings.get("diverse"), int) and settings["diverse"] > 1:
        parts.append(f"{settings['diverse']} diverse images")
    return ", ".join(parts)


def caption(rec: dict[str, Any], k: int = 0) -> str:
    """``unit 7: activation 23.3 (channel mean), peak 41.2 = 3.1x the mined top-1`` for image ``k``."""
    objective = "channel mean" if rec["settings"].get("objective", "channel") == "channel" else "centre value"
    text = f"unit {rec['unit']}: activation {rec['activation'][k]:.3g} ({objective}), peak {rec['peak'][k]:.3g}"
    ratio = rec["ratio"][k] if rec["ratio"] and k < len(rec["ratio"]) else None
    if ratio is not None:
        return text + f" = {ratio:.2f}x the mined top-1"
    if rec["top1"] is None:
        return text + "; no mined top-1 to compare with"
    return text + f"; mined top-1 {rec['top1']:.3g}, no ratio"


def cache_folders(root: Path) -> list[Path]:
    """Feature-visualization caches in a run: ``root/featvis`` and ``root/*/featvis`` (the explorer
    writes ``MINE/featvis``) that hold unit records but no ``result.json`` of their own."""
    found = [root / CACHE_DIR, *sorted(root.glob(f"*/{CACHE_DIR}"))]
    return [f for f in found if f.is_dir() and not (f / "result.json").is_file() and any(f.glob("*/unit_*.json"))]


def cache_results(root: Path) -> list[Result]:
    """One ``featvis`` :class:`~convlens.io.manifest.Result` per cache folder of :func:`cache_folders`
    (a figure per unit image, grouped by layer, and a table), for runs whose feature visualizations
    were computed in the explorer."""
    out = []
    for folder in cache_folders(root):
        figures, rows = [], []
        for layer in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            for unit, rec in read_layer(folder, layer).items():
                for k, name in enumerate(rec["images"]):
                    figures.append(Figure(folder / layer / name, caption(rec, k), layer))  # settings: in the table
                ratio = max(rec["ratio"]) if rec["ratio"] else None
                rows.append((layer, str(unit), f"{max(rec['activation']):.4g}", f"{max(rec['peak']):.4g}",
                             "" if rec["top1"] is None else f"{rec['top1']:.4g}",
                             "" if ratio is None else f"{ratio:.2f}", settings_text(rec["settings"])))
        if not rows:
            continue
        name = folder.relative_to(root).as_posix()
        out.append(Result(
            kind="featvis", title=f"Feature visualizations cached in {name}",
            summary=(f"{len(rows)} units computed on demand in the explorer (cached in {name}); each image is "
                     "optimized to excite its unit, its activation read back from the saved PNG; the natural "
                     "top-9 remain the primary view."),
            params={}, figures=tuple(figures),
            tables=(Table("Cached feature visualizations", ("layer", "unit", "activation (objective)", "peak",
                                                            "mined top-1", "peak / top-1", "settings"),
                          tuple(rows)),),
            data={"cache": name}, dir=folder, name=name))
    return out
