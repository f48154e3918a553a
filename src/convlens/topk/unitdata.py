"""What a unit page and a layer page show beyond the top 9, read from an activation table.

:func:`unit_range` gives one map's bottom-k, quantile examples, histogram and class statistics;
:func:`layer_labels` every map's label (:func:`convlens.topk.unitstats.unit_labels`). Both return
plain JSON-ready dicts (the explorer's ``/api`` routes serve them as they are); each example is
``{"index", "image", "value", "label", "class"}``, ``image`` being the image's name in the dataset
(its path relative to the dataset folder). Definitions: :mod:`convlens.topk.unitstats`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convlens.topk.acttable import ActTable
from convlens.topk.unitstats import (
    QUANTILES,
    UnitLabels,
    bottom_k,
    class_stats,
    histogram,
    quantile_examples,
    unit_labels,
)

__all__ = ["layer_labels", "map_column", "unit_range"]


def map_column(table: ActTable, layer: str, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Map ``m`` of ``layer`` over the mined rows: (values float32, dataset indices)."""
    n_maps = table.layers.get(layer)
    if n_maps is None:
        raise ValueError(f"layer must be one of the table's layers {sorted(table.layers)}, got {layer!r}")
    if not 0 <= m < n_maps:
        raise ValueError(f"map must be in [0, {n_maps}) for {layer}, got {m}")
    rows = table.rows()
    return np.asarray(table.values(layer)[rows, m], dtype=np.float32), rows


def _example(index: int, value: float, names: Sequence[str], labels: np.ndarray,
             class_names: Sequence[str]) -> dict[str, Any]:
    lab = int(labels[index])
    return {"index": index, "image": names[index], "value": value, "label": lab,
            "class": class_names[lab] if 0 <= lab < len(class_names) else ""}


def unit_range(table: ActTable, layer: str, m: int, class_names: Sequence[str], *, k: int = 9,
               quantiles: Sequence[float] = QUANTILES, bins: int = 32, classes: int = 10) -> dict[str, Any]:
    """Map ``m``'s whole range: ``bottom`` (k weakest), ``quantiles`` (``{"0.9": [k examples]}``),
    ``histogram`` (``{"counts", "edges"}``), ``classes`` (the ``classes`` classes with the highest
    mean: ``{"class", "name", "mean", "selectivity", "images"}``) and ``images`` (mined rows)."""
    x, rows = map_column(table, layer, m)
    labels, names = table.labels(), table.image_names()

    def ex(pairs: list[tuple[int, float]]) -> list[dict[str, Any]]:
        return [_example(i, v, names, labels, class_names) for i, v in pairs]

    counts, edges = histogram(x, bins)
    n_classes = max(len(class_names), int(labels.max()) + 1 if len(labels) else 0)
    stats = class_stats(x[:, None], labels[rows], n_classes)
    means = np.where(stats.counts > 0, np.nan_to_num(stats.means[0], nan=-np.inf), -np.inf)
    top = [int(c) for c in np.argsort(-means, kind="stable")[:classes] if stats.counts[c] > 0]
    return {
        "layer": layer, "map": m, "images": len(rows),
        "bottom": ex(bottom_k(x, rows, k)),
        "quantiles": {_qkey(q): ex(v) for q, v in quantile_examples(x, rows, quantiles, k).items()},
        "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]},
        "classes": [{"class": c, "name": class_names[c] if c < len(class_names) else str(c),
                     "mean": float(stats.means[0, c]), "selectivity": float(stats.selectivity[0, c]),
                     "images": int(stats.counts[c])} for c in top],
    }


def _qkey(q: float) -> str:
    """``0.9`` -> ``"0.9"``, ``0.5`` -> ``"0.5"`` (the shortest repr)."""
    return repr(float(q))


def layer_labels(table: ActTable, layer: str, class_names: Sequence[str], *, threshold: float = 0.75,
                 min_images: int = 2) -> UnitLabels:
    """Every map's label (AUROC of its per-image maximum, best class; see :mod:`convlens.topk.unitstats`)."""
    rows = table.rows()
    values = np.asarray(table.values(layer)[rows], dtype=np.float32)
    return unit_labels(values, table.labels()[rows], class_names, threshold=threshold, min_images=min_images)
