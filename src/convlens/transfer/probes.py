"""Feature generalization (Sec. 5.2, Tables 4-7, Fig. 9): frozen features, linear probes, the
Caltech protocol, per-class accuracy and the train/test contamination check.

* :func:`extract_features` runs a frozen model over a loader and keeps named layers. Conv maps
  are adaptive-pooled to ``pool_size x pool_size`` (the paper feeds whole maps to its SVMs;
  pooling keeps the probe small enough for a CPU and is the only departure), fc layers as is.
* :func:`fit_probe` trains one linear classifier on frozen features. ``softmax`` is the paper's
  "retrain the softmax on top of layers 1-7": a torch linear layer, full batch, L-BFGS (150
  iterations), L2 penalty, deterministic. ``svm`` (scikit-learn ``LinearSVC``, one-vs-rest,
  squared hinge), ``svm-sgd`` (scikit-learn ``SGDClassifier``, hinge loss, the same L2 scale,
  30 epochs: bounded cost; liblinear needed minutes per fit on 102-class, weak low-layer
  features here) and ``logreg`` (scikit-learn multinomial ``LogisticRegression``) are the
  per-layer probes of Table 7. SVM / logreg features are standardized with statistics of the training split only.
* :func:`caltech_folds` / :func:`evaluate_probes` implement the Caltech protocol: ``n`` training
  images per class, up to ``n_test`` (50) of the remaining images per class for testing, the mean
  of per-class accuracies, over seeded random folds, reported as mean +- std (population std over
  folds, ``ddof=0``).
* :func:`image_signatures` / :func:`find_duplicates`: the paper's normalized-correlation check
  (footnote of Sec. 5.2) on downscaled, mean-subtracted, unit-norm grey images, by blocked matrix
  products; every pair above the threshold is reported exactly.

Core code here does no file I/O; caching and plots live in ``commands/transfer.py``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.core.capture import record_activations
from convlens.io.progress import progress_bar

__all__ = [
    "PROBES",
    "Duplicates",
    "Features",
    "ProbeResult",
    "ProtocolResult",
    "caltech_folds",
    "evaluate_probes",
    "extract_features",
    "find_duplicates",
    "fit_probe",
    "image_signatures",
    "per_class_accuracy",
]

log = logging.getLogger(__name__)

PROBES = ("svm", "svm-sgd", "logreg", "softmax")


@dataclass(frozen=True)
class Features:
    """Frozen features of a dataset: ``features[layer]`` (N, D) float32, ``labels`` (N,)."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    indices: torch.Tensor

    def to_dict(self) -> dict[str, object]:
        return {"layers": {k: list(v.shape) for k, v in self.features.items()}, "n": int(self.labels.numel())}


def _pool(act: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if act.dim() == 2:  # fc layer: as is
        return act
    if act.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) or (B, F) activations, got shape {tuple(act.shape)}")
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    return pool(act, size).flatten(1)  # (B, C*size*size)


def _batch_parts(batch: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("loader must yield (images, labels) or (images, labels, indices) batches")
    images, labels = batch[0], torch.as_tensor(batch[1])
    return images, labels, (torch.as_tensor(batch[2]) if len(batch) == 3 else None)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable[object],
    layers: Sequence[str],
    *,
    pool_size: int | Mapping[str, int] = 2,
    pool: str = "avg",
    progress: bool = False,
) -> Features:
    """Run a frozen model over ``loader`` and keep pooled activations of ``layers``.

    Args:
        model: a :class:`~convlens.nets.convnet.ConvNet` (``conv1..conv5, fc6, fc7``) or any module
            (dotted submodule names such as ``features.6``); put it on the device yourself.
        loader: yields ``(images (B,3,H,W), labels)`` or ``(images, labels, indices)``.
        layers: layer names to keep.
        pool_size: side of the adaptive pooling of conv maps (int, or per-layer mapping).
        pool: ``"avg"`` or ``"max"``.

    Returns:
        :class:`Features`; ``indices`` are the loader's indices or 0..N-1.

    Example:
        >>> feats = extract_features(model, loader, ["conv5", "fc7"], pool_size=2)
        >>> feats.features["conv5"].shape  # (N, C5 * 2 * 2)
    """
    if pool not in ("avg", "max"):
        raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    if not layers:
        raise ValueError("layers is empty; name at least one layer, e.g. ['conv5', 'fc7']")
    sizes = {name: (pool_size[name] if isinstance(pool_size, Mapping) else pool_size) for name in layers}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    labels, indices, seen = [], [], 0
    try:
        with record_activations(model, list(layers)) as acts:
            for batch in progress_bar(loader, disable=not progress, desc="features"):
                images, y, idx = _batch_parts(batch)
                model(images.to(device))
                for name in layers:
                    chunks[name].append(_pool(acts[name], sizes[name], pool).float().cpu())
                labels.append(y.cpu())
                indices.append(idx.cpu() if idx is not None else torch.arange(seen, seen + len(y)))
                seen += len(y)
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("loader yielded no batches; is the dataset empty?")
    feats = {name: torch.cat(chunks[name]) for name in layers}
    return Features(feats, torch.cat(labels).long(), torch.cat(indices).long())


def per_class_accuracy(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy of each class, (num_classes,); NaN for classes absent from ``y_true``.

    The paper's Caltech number is the mean of this over classes (``nanmean``).
    """
    y_true, y_pred = torch.as_tensor(y_true).long(), torch.as_tensor(y_pred).long()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    confusion.index_put_((y_true, y_pred), torch.ones(len(y_true), dtype=torch.float64), accumulate=True)
    support = confusion.sum(1)
    acc = confusion.diagonal() / support
    acc[support == 0] = float("nan")
    return acc


def caltech_folds(
    labels: torch.Tensor, n_train: int, *, n_test: int = 50, folds: int = 5, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random train/test splits of the Caltech protocol.

    Per class and fold: ``n_train`` random images for training and up to ``n_test`` of the rest
    for testing (train and test are disjoint within a fold). Classes with at most ``n_train``
    images are trained on all but one image and tested on that one.

    Returns:
        ``folds`` pairs of sorted index tensors ``(train_idx, test_idx)``.
    """
    if n_train < 1 or n_test < 1 or folds < 1:
        raise ValueError(f"n_train, n_test and folds must be >= 1, got {n_train}, {n_test}, {folds}")
    labels = torch.as_tensor(labels).long()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(folds):
        train, test = [], []
        for c in torch.unique(labels).tolist():
            members = torch.nonzero(labels == c).flatten()
            members = members[torch.randperm(len(members), generator=gen)]
            k = min(n_train, len(members) - 1) if len(members) > 1 else len(members)
            train.append(members[:k])
            test.append(members[k : k + n_test])
        out.append((torch.cat(train).sort().values, torch.cat(test).sort().values))
    return out


def _softmax_probe(x: np.ndarray, y: np.ndarray, num_classes: int, c: float, seed: int,
                   max_iter: int = 150) -> nn.Linear:
    torch.manual_seed(seed)  # L-BFGS from zeros is deterministic; the seed only guards future changes
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, line_search_fn="strong_wolfe")
    l2 = 1.0 / (c * len(y))  # same scaling as scikit-learn's C

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(xt), yt) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


@dataclass(frozen=True)
class ProbeResult:
    """One probe on one split: predictions, per-class accuracy (NaN = class not tested), mean."""

    kind: str
    predictions: torch.Tensor
    per_class: torch.Tensor
    mean_class_accuracy: float
    accuracy: float

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "mean_class_accuracy": self.mean_class_accuracy, "accuracy": self.accuracy,
                "per_class": [None if np.isnan(v) else float(v) for v in self.per_class.tolist()]}


def fit_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    kind: str = "svm",
    c: float = 1.0,
    num_classes: int | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Train a linear classifier on frozen features and score it on the test split.

    Args:
        train_x, test_x: (N, D) features. train_y, test_y: (N,) integer labels.
        kind: ``svm`` (LinearSVC), ``svm-sgd`` (SGDClassifier, hinge), ``logreg`` (multinomial
            LogisticRegression) or ``softmax`` (torch linear layer, L-BFGS, the paper's classifier).
        c: inverse regularization strength (scikit-learn's ``C``; the same scale for softmax).
        num_classes: size of the per-class table (default: max label + 1).

    Example:
        >>> res = fit_probe(xtr, ytr, xte, yte, kind="svm")
        >>> res.mean_class_accuracy
    """
    if kind not in PROBES:
        raise ValueError(f"unknown probe {kind!r}; expected one of {', '.join(PROBES)}")
    xtr, xte = train_x.double().numpy(), test_x.double().numpy()
    ytr, yte = torch.as_tensor(train_y).long().numpy(), torch.as_tensor(test_y).long()
    k = num_classes or int(max(ytr.max(), int(yte.max())) + 1)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6  # standardize with training statistics only
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    if kind == "softmax":
        head = _softmax_probe(xtr, ytr, k, c, seed)
        with torch.no_grad():
            pred = head(torch.from_numpy(xte).float()).argmax(1)
    else:
        from sklearn.linear_model import LogisticRegression, SGDClassifier
        from sklearn.svm import LinearSVC

        if kind == "svm":
            clf = LinearSVC(C=c, dual="auto", tol=1e-3, max_iter=1000, random_state=seed)
        elif kind == "svm-sgd":  # the same hinge + L2 objective by SGD: bounded cost for many classes/dims
            clf = SGDClassifier(loss="hinge", alpha=1.0 / (c * len(ytr)), max_iter=30, tol=None, random_state=seed)
        else:
            clf = LogisticRegression(C=c, tol=1e-3, max_iter=300, random_state=seed)
        clf.fit(xtr, ytr)
        pred = torch.from_numpy(clf.predict(xte)).long()
    per_class = per_class_accuracy(yte, pred, k)
    return ProbeResult(kind, pred, per_class, float(np.nanmean(per_class.numpy())),
                       float((pred == yte).double().mean()))


@dataclass(frozen=True)
class ProtocolResult:
    """Mean-class accuracy per (layer, probe, n_train) over folds.

    ``scores[(layer, probe, n)]`` is a (folds,) tensor; ``per_class[(layer, probe, n)]`` is the
    (num_classes,) per-class accuracy averaged over folds.
    """

    scores: dict[tuple[str, str, int], torch.Tensor]
    per_class: dict[tuple[str, str, int], torch.Tensor]
    folds: int
    seed: int
    extra: dict[str, object] = field(default_factory=dict)

    def mean_std(self, layer: str, probe: str, n: int) -> tuple[float, float]:
        s = self.scores[(layer, probe, n)].double()
        return float(s.mean()), float(s.std(unbiased=False))

    def to_dict(self) -> dict[str, object]:
        return {"folds": self.folds, "seed": self.seed,
                "scores": [{"layer": lay, "probe": p, "n_train": n, "folds": s.tolist(),
                            "mean": self.mean_std(lay, p, n)[0], "std": self.mean_std(lay, p, n)[1]}
                           for (lay, p, n), s in self.scores.items()]}


def evaluate_probes(
    feats: Features,
    *,
    n_train: Sequence[int] = (15, 30),
    probes: Sequence[str] = ("svm",),
    folds: int = 5,
    n_test: int = 50,
    seed: int = 0,
    c: float = 1.0,
    progress: bool = False,
) -> ProtocolResult:
    """The Caltech protocol for every layer of ``feats``, probe and training size (same folds).

    Example:
        >>> res = evaluate_probes(feats, n_train=[30], probes=["svm", "softmax"], folds=5)
        >>> res.mean_std("fc7", "softmax", 30)
    """
    for p in probes:
        if p not in PROBES:
            raise ValueError(f"unknown probe {p!r}; expected one of {', '.join(PROBES)}")
    k = int(feats.labels.max()) + 1
    scores: dict[tuple[str, str, int], torch.Tensor] = {}
    per_class: dict[tuple[str, str, int], torch.Tensor] = {}
    jobs = [(n, f, tr, te) for n in n_train
            for f, (tr, te) in enumerate(caltech_folds(feats.labels, n, n_test=n_test, folds=folds, seed=seed))]
    for layer, x in feats.features.items():
        for probe in probes:
            results: dict[int, list[ProbeResult]] = {n: [] for n in n_train}
            for n, _f, tr, te in progress_bar(jobs, disable=not progress, desc=f"{layer}/{probe}"):
                results[n].append(fit_probe(x[tr], feats.labels[tr], x[te], feats.labels[te],
                                            kind=probe, c=c, num_classes=k, seed=seed))
            for n, rs in results.items():
                scores[(layer, probe, n)] = torch.tensor([r.mean_class_accuracy for r in rs])
                per_class[(layer, probe, n)] = torch.stack([r.per_class for r in rs]).nanmean(0)
                log.info("%s %s n=%d: %.4f", layer, probe, n, float(scores[(layer, probe, n)].mean()))
    return ProtocolResult(scores, per_class, folds, seed)


def image_signatures(images: torch.Tensor, *, size: int = 32) -> torch.Tensor:
    """Downscaled grey, mean-subtracted, unit-norm images, (N, size*size), for :func:`find_duplicates`.

    Args:
        images: (N, C, H, W) pixels (any consistent scale; 1 or 3 channels).
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1|3, H, W), got {tuple(images.shape)}")
    grey = images.float().mean(1, keepdim=True)  # (N, 1, H, W)
    small = F.interpolate(grey, size=(size, size), mode="area").flatten(1)  # (N, size*size)
    small = small - small.mean(1, keepdim=True)
    return small / small.norm(dim=1, keepdim=True).clamp_min(1e-8)


@dataclass(frozen=True)
class Duplicates:
    """Pairs ``(i in A, j in B)`` with normalized correlation >= threshold, best first; and each A's best match."""

    pairs: torch.Tensor  # (M, 2)
    scores: torch.Tensor  # (M,)
    best_match: torch.Tensor  # (N_A,) index into B
    best_score: torch.Tensor  # (N_A,)
    threshold: float

    def to_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold,
                "pairs": [[int(i), int(j), float(s)]
                          for (i, j), s in zip(self.pairs.tolist(), self.scores.tolist(), strict=False)]}


def find_duplicates(sig_a: torch.Tensor, sig_b: torch.Tensor, *, threshold: float = 0.95,
                    block: int = 2048, exclude_self: bool = False) -> Duplicates:
    """Normalized cross-correlation between two sets of :func:`image_signatures`, blockwise.

    Args:
        sig_a: (N_A, D) and sig_b: (N_B, D) unit-norm signatures.
        threshold: report every pair with correlation >= threshold (1.0 = identical up to
            brightness/contrast after downscaling).
        exclude_self: for ``sig_a is sig_b``-style self-comparison, ignore pairs with i >= j.

    Example:
        >>> dup = find_duplicates(image_signatures(a), image_signatures(b), threshold=0.95)
        >>> dup.pairs  # rows (i, j)
    """
    if sig_a.dim() != 2 or sig_b.dim() != 2 or sig_a.shape[1] != sig_b.shape[1]:
        raise ValueError(f"signatures must be (N, D) with equal D, got {tuple(sig_a.shape)} and {tuple(sig_b.shape)}")
    pairs, scores, best, best_s = [], [], [], []
    for start in range(0, len(sig_a), block):
        sim = sig_a[start:start + block] @ sig_b.T  # (b, N_B)
        if exclude_self:
            rows = torch.arange(start, start + len(sim))[:, None]
            sim = sim.masked_fill(torch.arange(len(sig_b))[None, :] <= rows, -2.0)
        s, j = sim.max(1)
        best.append(j)
        best_s.append(s)
        hit = torch.nonzero(sim >= threshold)
        pairs.append(hit + torch.tensor([start, 0]))
        scores.append(sim[hit[:, 0], hit[:, 1]])
    p, sc = torch.cat(pairs), torch.cat(scores)
    order = sc.argsort(descending=True)
    return Duplicates(p[order], sc[order], torch.cat(best), torch.cat(best_s), threshold)
