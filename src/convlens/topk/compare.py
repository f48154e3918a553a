"""Unit matching across two mined runs (two checkpoints of one training, or two models): which unit
of B behaves like this unit of A over the same images? (the question Fig. 4 asks by eye).

:func:`compare_tables` correlates two activation tables (:mod:`convlens.topk.acttable`) over the
images both runs mined (same dataset indices): for every pair of layers, the Pearson correlation
of every map of A with every map of B across those images (float64), then each unit's best match
in the other run, both ways. A constant map (dead over these images) has no correlation and no
match (``match`` -1, ``r`` None). :func:`write_comparison` writes ``result.json`` (kind
``compare``; ``data.layers.<layer>.a_to_b`` and ``b_to_a``: lists of ``{"unit", "match", "r"}``)
and ``compare.png`` (per layer: the sorted best-match curves, the share of units that persist,
and the correlation matrix ordered by the matches).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convlens.topk.acttable import ActTable, load_table

__all__ = ["LayerMatch", "compare_runs", "compare_tables", "correlate", "write_comparison"]

PERSIST_R = 0.5
"""A unit "persists" in the figure's summary when its best match has r >= this."""


def correlate(a: np.ndarray, b: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """(Ca, Cb) Pearson correlation of the columns of ``a`` (n, Ca) and ``b`` (n, Cb); NaN for a
    constant column. Rows ``chunk`` at a time, in float64."""
    n = a.shape[0]
    if n < 2 or b.shape[0] != n:
        raise ValueError(f"a and b must have the same number of rows (>= 2), got {a.shape[0]} and {b.shape[0]}")
    sums = [np.zeros(a.shape[1]), np.zeros(b.shape[1])]
    for s in range(0, n, chunk):
        sums[0] += np.asarray(a[s:s + chunk], dtype=np.float64).sum(0)
        sums[1] += np.asarray(b[s:s + chunk], dtype=np.float64).sum(0)
    ma, mb = sums[0] / n, sums[1] / n
    cross, va, vb = np.zeros((a.shape[1], b.shape[1])), np.zeros(a.shape[1]), np.zeros(b.shape[1])
    for s in range(0, n, chunk):
        da = np.asarray(a[s:s + chunk], dtype=np.float64) - ma
        db = np.asarray(b[s:s + chunk], dtype=np.float64) - mb
        cross += da.T @ db
        va += (da * da).sum(0)
        vb += (db * db).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cross / np.sqrt(np.outer(va, vb))
    r[va <= 0] = np.nan
    r[:, vb <= 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def _best(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column with the largest r (ties: the smaller) and that r; -1 / NaN for an all-NaN row."""
    filled = np.where(np.isnan(r), -np.inf, r)
    match = np.argmax(filled, axis=1) if r.shape[1] else np.zeros(r.shape[0], dtype=np.int64)
    best = filled[np.arange(r.shape[0]), match] if r.shape[1] else np.full(r.shape[0], -np.inf)
    ok = np.isfinite(best)
    return np.where(ok, match, -1), np.where(ok, best, np.nan)


def _pairs(match: np.ndarray, r: np.ndarray) -> list[dict[str, Any]]:
    return [{"unit": u, "match": int(m) if m >= 0 else None, "r": float(v) if np.isfinite(v) else None}
            for u, (m, v) in enumerate(zip(match, r, strict=True))]


@dataclass(frozen=True)
class LayerMatch:
    """One pair of layers: ``corr`` (Ca, Cb); per unit of A its match in B and r (``a_to_b``,
    ``r_a``), and the reverse (``b_to_a``, ``r_b``); ``images`` compared."""

    layer_a: str
    layer_b: str
    images: int
    corr: np.ndarray
    a_to_b: np.ndarray
    r_a: np.ndarray
    b_to_a: np.ndarray
    r_b: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        persist = float(np.mean(np.nan_to_num(self.r_a, nan=-1.0) >= PERSIST_R)) if len(self.r_a) else 0.0
        return {"layer_b": self.layer_b, "images": self.images, "persisting_share": persist,
                "a_to_b": _pairs(self.a_to_b, self.r_a), "b_to_a": _pairs(self.b_to_a, self.r_b)}


def compare_tables(a: ActTable, b: ActTable, layers: Sequence[tuple[str, str]] | None = None) -> dict[str, LayerMatch]:
    """Match the units of ``a`` to those of ``b`` per pair of layers ``(layer of a, layer of b)``
    (default: the layers both tables have), over the rows both mined.

    Raises:
        ValueError: the tables index datasets of different sizes, share no mined image, or a layer is missing.
    """
    if a.num_images != b.num_images:
        raise ValueError(f"the runs must be mined on one dataset: {a.folder} has {a.num_images} images, {b.folder} "
                         f"{b.num_images}; mine both on the same --dataset/--split/--limit")
    rows = np.flatnonzero(a.filled() & b.filled())
    if len(rows) < 2:
        raise ValueError(f"the runs share {len(rows)} mined images (need >= 2): mine both on the same images")
    if layers is None:
        layers = [(n, n) for n in a.layers if n in b.layers]
        if not layers:
            raise ValueError(f"the runs share no layer name (A: {', '.join(a.layers)}; B: {', '.join(b.layers)}); "
                             "pair them with --layers A_LAYER=B_LAYER")
    out = {}
    for la, lb in layers:
        for t, name in ((a, la), (b, lb)):
            if name not in t.layers:
                raise ValueError(f"layer {name!r} is not in the table of {t.folder} (it has {', '.join(t.layers)})")
        corr = correlate(np.asarray(a.values(la)[rows]), np.asarray(b.values(lb)[rows]))
        ab, ra = _best(corr)
        ba, rb = _best(corr.T)
        out[la] = LayerMatch(la, lb, len(rows), corr, ab, ra, ba, rb)
    return out


def compare_runs(run_a: str | Path, run_b: str | Path,
                 layers: Sequence[tuple[str, str]] | None = None) -> dict[str, LayerMatch]:
    """:func:`compare_tables` of two mined runs' folders (the ``convlens mine --out`` folders)."""
    return compare_tables(load_table(run_a), load_table(run_b), layers)


def _figure(matches: dict[str, LayerMatch]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(matches), 2, figsize=(10, 3.6 * len(matches)), squeeze=False)
    for (ax_curve, ax_mat), m in zip(axes, matches.values(), strict=True):
        for r, label in ((m.r_a, f"A {m.layer_a} -> B"), (m.r_b, f"B {m.layer_b} -> A")):
            v = np.sort(np.nan_to_num(r, nan=0.0))[::-1]
            ax_curve.plot(np.arange(1, len(v) + 1) / max(len(v), 1), v, label=label)
        share = float(np.mean(np.nan_to_num(m.r_a, nan=-1.0) >= PERSIST_R)) if len(m.r_a) else 0.0
        ax_curve.axhline(PERSIST_R, color="grey", lw=0.8, ls="--")
        ax_curve.set(xlabel="share of units (sorted by best-match r)", ylabel="r of the best match", ylim=(-0.1, 1.02),
                     title=f"{m.layer_a} vs {m.layer_b}: {share:.0%} of A's units persist (r >= {PERSIST_R})")
        ax_curve.legend(loc="lower left", fontsize=8)
        order = np.argsort(-np.nan_to_num(m.r_a, nan=-2.0), kind="stable")
        cols = [int(c) for c in m.a_to_b[order] if c >= 0]
        cols += [c for c in range(m.corr.shape[1]) if c not in set(cols)]
        im = ax_mat.imshow(np.nan_to_num(m.corr[order][:, list(dict.fromkeys(cols))]), cmap="RdBu_r", vmin=-1, vmax=1,
                           aspect="auto", interpolation="nearest")
        ax_mat.set(xlabel=f"B units ({m.layer_b}), in match order", ylabel=f"A units ({m.layer_a}), best first",
                   title=f"correlation over {m.images} images")
        fig.colorbar(im, ax=ax_mat, fraction=0.046)
    fig.tight_layout()
    return fig


def write_comparison(out: str | Path, matches: dict[str, LayerMatch], run_a: str | Path, run_b: str | Path) -> Path:
    """``out/result.json`` (kind ``compare``) and ``out/compare.png``; returns the result's path."""
    import matplotlib.pyplot as plt

    from convlens.io.artifacts import save_figure, write_result

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig = _figure(matches)
    save_figure(fig, out / "compare.png", dpi=90)
    plt.close(fig)
    rows = [[m.layer_a, m.layer_b, m.images, f"{np.nanmedian(m.r_a):.3f}" if np.isfinite(m.r_a).any() else "-",
             f"{m.to_dict()['persisting_share']:.0%}"] for m in matches.values()]
    return write_result(
        out, "compare", title="Unit matching between two runs",
        summary=f"Each unit of A matched to the unit of B whose per-image maxima correlate best (Pearson r over "
                f"the images both runs mined), and the reverse; a unit persists when r >= {PERSIST_R}.",
        params={"run_a": str(run_a), "run_b": str(run_b), "layers": {m.layer_a: m.layer_b for m in matches.values()}},
        figures=[{"path": "compare.png",
                  "caption": "Per layer: sorted best-match r both ways (left; a dead unit counts as 0); the "
                             "correlation matrix with A's units best first and B's in match order (right)."}],
        tables=[{"title": "Units matched per layer", "rows": rows,
                 "columns": ["layer A", "layer B", "images", "median best r (A to B)", "A units persisting"]}],
        data={"layers": {m.layer_a: m.to_dict() for m in matches.values()}},
    )
