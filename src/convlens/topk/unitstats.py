"""Every unit's whole activation range, from the activation table: examples, histograms, class
statistics and labels (numpy only; the table is :mod:`convlens.topk.acttable`).

Inputs are a map's (or a layer's) per-image maxima ``x`` over the mined images and their dataset
``indices`` (ascending). Definitions, exactly:

* **Order**: images sorted by value, ties by dataset index (ascending). The **bottom k** are the
  first k of that order.
* **Quantile examples**: for a quantile q, the centre is position ``p = floor(q * (n - 1))`` of the
  order (the image whose value is ``numpy.quantile(x, q, method="lower")``); the k examples are the
  k consecutive images of the order centred on it (positions ``p - k // 2`` ..., shifted to stay
  inside ``0 .. n - 1``), listed from the strongest down.
* **Histogram**: ``bins`` equal bins between the map's own minimum and maximum (``numpy.histogram``;
  a constant map gets the range value +- 0.5).
* **Class statistics**: per class c, the mean of x over its images, and the **selectivity**
  ``(mean_c - mean_rest) / std`` (mean over the other images; std over all images, 0 when the map
  is constant).
* **AUROC** of class c: the probability that an image of c has a larger x than an image of
  another class, ties counting one half (Mann-Whitney U from average ranks; one sort per map).
* **Label**: the class with the largest AUROC among classes with at least ``min_images`` images;
  a map has *no good label* (``name`` None) when that AUROC is below ``threshold`` (default 0.75)
  or could be chance: with few images per class, the best of many classes' AUROCs is high even
  for a random map, so the best one must also be significant, its z-score
  ``(AUROC - 0.5) / sqrt((n + 1) / (12 n_c (n - n_c)))`` (the Mann-Whitney null, no tie
  correction: conservative) at least the one-sided normal quantile ``1 - alpha / K`` (Bonferroni
  over the K candidate classes; ``alpha`` 0.01). With 6 images per class of 102 classes, a label
  needs an AUROC of about 0.94; with 50 per class of 10, about 0.68 (so the 0.75 floor decides).
  Group labels (a class hierarchy) are not computed: none of the datasets convlens reads gives one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["QUANTILES", "ClassStats", "UnitLabels", "auroc", "bottom_k", "chance_sigma", "class_stats", "histogram",
           "quantile_examples", "unit_labels"]

QUANTILES = (0.99, 0.9, 0.5, 0.1)


def _order(x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Positions of ``x`` sorted by value, ties by dataset index (both ascending)."""
    return np.lexsort((np.asarray(indices), np.asarray(x, dtype=np.float64)))


def bottom_k(x: np.ndarray, indices: np.ndarray, k: int = 9) -> list[tuple[int, float]]:
    """The ``k`` weakest images: (dataset index, value), weakest first."""
    order = _order(x, indices)[:k]
    return [(int(indices[i]), float(x[i])) for i in order]


def quantile_examples(x: np.ndarray, indices: np.ndarray, quantiles: Sequence[float] = QUANTILES,
                      k: int = 9) -> dict[float, list[tuple[int, float]]]:
    """Per quantile q, ``k`` images around the q-quantile (module docstring): (index, value), strongest first."""
    n = len(x)
    order = _order(x, indices)
    out = {}
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantiles must be in [0, 1], got {q}")
        p = int(np.floor(q * (n - 1))) if n else 0
        start = min(max(p - k // 2, 0), max(n - k, 0))
        pick = order[start:start + k][::-1]
        out[float(q)] = [(int(indices[i]), float(x[i])) for i in pick]
    return out


def histogram(x: np.ndarray, bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(counts (bins,), edges (bins + 1,))`` of ``x`` between its own min and max."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
    counts, edges = np.histogram(x, bins=bins, range=(float(x.min()), float(x.max())))
    return counts.astype(np.int64), edges


@dataclass(frozen=True)
class ClassStats:
    """Per map and class: ``means`` (C, K) (NaN without images), ``selectivity`` (C, K); ``counts`` (K,)."""

    means: np.ndarray
    selectivity: np.ndarray
    counts: np.ndarray


def _class_sums(a: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, C) float64 sums of the rows of ``a`` per label (labels outside 0..K-1 ignored), (K,) counts."""
    keep = (labels >= 0) & (labels < num_classes)
    lab = labels[keep]
    order = np.argsort(lab, kind="stable")
    lab = lab[order]
    counts = np.bincount(lab, minlength=num_classes)
    sums = np.zeros((num_classes, a.shape[1]), dtype=np.float64)
    if len(lab):
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        sums[lab[starts]] = np.add.reduceat(np.asarray(a, dtype=np.float64)[keep][order], starts, axis=0)
    return sums, counts


def class_stats(a: np.ndarray, labels: np.ndarray, num_classes: int) -> ClassStats:
    """Class means and selectivity of every map of ``a`` (n_images, C) (module docstring)."""
    a64 = np.asarray(a, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    sums, counts = _class_sums(a64, labels, num_classes)
    total, n = a64.sum(0), len(a64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
        rest = (total[None] - sums) / (n - counts)[:, None]
        std = a64.std(0)
        sel = np.where(std[None] > 0, (means - rest) / np.where(std > 0, std, 1.0)[None], 0.0)
    sel = np.where(counts[:, None] > 0, sel, np.nan)
    return ClassStats(means.T.copy(), sel.T.copy(), counts)


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Per row, the 1-based ranks of ``a`` (C, n), ties getting their average rank (float64)."""
    c, n = a.shape
    order = np.argsort(a, axis=1)
    s = np.take_along_axis(a, order, axis=1).ravel()
    new = np.ones(s.shape, dtype=bool)  # a new run of equal values (each row starts one)
    new[1:] = s[1:] != s[:-1]
    new[::n] = True
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], s.size) - 1
    mid = (starts + ends) / 2.0
    rank = mid[np.cumsum(new) - 1].reshape(c, n) - (np.arange(c) * n)[:, None] + 1.0
    ranks = np.empty(a.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, rank, axis=1)
    return ranks


def auroc(a: np.ndarray, labels: np.ndarray, num_classes: int, *, chunk: int = 128) -> np.ndarray:
    """(C, K) AUROC of every map of ``a`` (n_images, C) for every class against all other images
    (NaN for a class with no images or all of them); ``chunk`` maps at a time bound the memory."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    keep = np.flatnonzero((labels >= 0) & (labels < num_classes))
    by_class = keep[np.argsort(labels[keep], kind="stable")]
    lab = labels[by_class]
    counts = np.bincount(lab, minlength=num_classes).astype(np.float64)
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]]) if len(lab) else np.zeros(0, dtype=np.int64)
    out = np.full((a.shape[1], num_classes), np.nan)
    for s in range(0, a.shape[1], chunk):
        block = np.ascontiguousarray(np.asarray(a[:, s:s + chunk], dtype=np.float32).T)  # (maps, n)
        ranks = _average_ranks(block)[:, by_class]
        rank_sums = np.zeros((block.shape[0], num_classes))
        if len(lab):
            rank_sums[:, lab[starts]] = np.add.reduceat(ranks, starts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            u = rank_sums - counts * (counts + 1) / 2
            out[s:s + chunk] = u / (counts * (n - counts))
    out[:, (counts == 0) | (counts == n)] = np.nan
    return out


@dataclass(frozen=True)
class UnitLabels:
    """Per map: ``classes`` (C,) best class (-1: none), ``scores`` (C,) its AUROC, ``names`` (the
    class name, or None where the map has no good label); ``threshold`` used."""

    classes: np.ndarray
    scores: np.ndarray
    names: list[str | None]
    threshold: float

    def label(self, m: int) -> dict[str, Any]:
        """``{"name", "class", "score", "good"}`` of map ``m`` (JSON-ready)."""
        score = float(self.scores[m])
        return {"name": self.names[m], "class": int(self.classes[m]),
                "score": score if np.isfinite(score) else None, "good": self.names[m] is not None}


def chance_sigma(counts: np.ndarray, n: int) -> np.ndarray:
    """Per class, the standard deviation of the AUROC of a random map (Mann-Whitney null, no ties)."""
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((n + 1) / (12.0 * c * (n - c)))


def unit_labels(a: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, threshold: float = 0.75,
                min_images: int = 2, alpha: float = 0.01) -> UnitLabels:
    """Label every map of ``a`` (n_images, C) with the class that best separates its activations
    (module docstring); classes with fewer than ``min_images`` images are not candidates; the best
    AUROC must reach ``threshold`` and be significant at ``alpha`` (Bonferroni over the candidates)."""
    from statistics import NormalDist

    if not 0.5 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0.5, 1], got {threshold}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    k = len(class_names)
    labels = np.asarray(labels)
    scores = auroc(a, labels, k)
    counts = np.bincount(labels[(labels >= 0) & (labels < k)], minlength=k)
    scores[:, counts < min_images] = np.nan
    filled = np.where(np.isfinite(scores), scores, -np.inf)
    best = np.argmax(filled, axis=1) if k else np.zeros(a.shape[1], dtype=np.int64)
    top = filled[np.arange(a.shape[1]), best] if k else np.full(a.shape[1], -np.inf)
    candidates = int(np.isfinite(scores).any(0).sum())
    z_min = NormalDist().inv_cdf(1 - alpha / max(candidates, 1))
    sigma = chance_sigma(counts, len(labels))[best] if k else np.ones(a.shape[1])
    good = (top >= threshold) & ((top - 0.5) / sigma >= z_min)
    names = [str(class_names[c]) if g else None for c, g in zip(best, good, strict=True)]
    classes = np.where(np.isfinite(top), best, -1)
    return UnitLabels(classes, np.where(np.isfinite(top), top, np.nan), names, float(threshold))
