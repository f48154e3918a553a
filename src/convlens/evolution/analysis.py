"""Feature evolution during training (Sec. 4, "Feature Evolution during Training", Fig. 4).

For a set of checkpoints of one training run and a few chosen feature maps per layer, find the
strongest activation of each map across the (training) dataset at each checkpoint (one streaming
mining pass per checkpoint, k = 1) and project it to pixels with the deconvnet.

How "the features stop changing" is made a number (not in the paper, which judges by eye): for
each map, the Pearson correlation of its projection (the receptive-field tile) at consecutive
checkpoints; per layer the mean over maps, and the first epoch from which that mean stays at or
above a threshold (0.9 by default). A jump to another image gives a low correlation, as the
paper notes ("sudden jumps in appearance result from a change in the image from which the
strongest activation originates"). Maps whose projection is constant (a dead map: its strongest
activation is 0) have no correlation (NaN) and are left out of the mean.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.topk.mining import mine_top_activations
from convlens.topk.tiles import unit_tiles

log = logging.getLogger(__name__)

__all__ = ["PAPER_EPOCHS", "Evolution", "feature_evolution", "find_checkpoints", "pearson", "pick_epochs"]

PAPER_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt$")


def find_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """``{epoch: path}`` of ``run_dir/checkpoints/epoch_NNN.pt``, sorted by epoch.

    Raises:
        FileNotFoundError: no such checkpoints.
    """
    folder = Path(run_dir) / "checkpoints"
    found = {int(m.group(1)): p for p in folder.glob("epoch_*.pt") if (m := _EPOCH_FILE.search(p.name))}
    if not found:
        raise FileNotFoundError(f"no checkpoints/epoch_NNN.pt in {run_dir}; train with 'convlens train --out RUN'")
    return dict(sorted(found.items()))


def pick_epochs(available: Sequence[int], wanted: Sequence[int] = PAPER_EPOCHS, *, at_most: int = 8) -> list[int]:
    """Every epoch when there are at most ``at_most``; else the paper's epochs that exist (plus the
    last); with fewer than 3 of those, ``at_most`` epochs spread evenly (always the first and last)."""
    avail = sorted(set(available))
    if len(avail) <= at_most:
        return avail
    chosen = sorted(set(e for e in wanted if e in avail) | {avail[-1]})
    if len(chosen) >= 3:
        return chosen
    step = (len(avail) - 1) / (at_most - 1)
    return sorted({avail[round(i * step)] for i in range(at_most)})


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Correlation of flattened images, row by row: (N, ...) x (N, ...) -> (N,), NaN where constant."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.full_like(den, math.nan))


@dataclass(frozen=True)
class Evolution:
    """Per layer, chosen maps tracked over checkpoints.

    Attributes:
        epochs: the checkpoints' epochs (E).
        maps: layer -> (M,) channels.
        projections: layer -> (M, E, 3, S, S) raw deconvnet projection of each map's strongest
            activation, cropped to its receptive field (``projview.render`` to show).
        values: layer -> (M, E) that activation.
        indices: layer -> (M, E) dataset index of the image it came from.
        correlations: layer -> (M, E-1) :func:`pearson` of consecutive projections.
        threshold: the "stopped changing" level for :meth:`converged_epoch`.
    """

    epochs: list[int]
    maps: dict[str, torch.Tensor]
    projections: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    indices: dict[str, torch.Tensor]
    correlations: dict[str, torch.Tensor] = field(default_factory=dict)
    threshold: float = 0.9

    def mean_correlation(self, layer: str) -> torch.Tensor:
        """(E-1,) mean over maps (NaN-free maps only) of the consecutive-epoch correlation."""
        return self.correlations[layer].nanmean(0)

    def converged_epoch(self, layer: str) -> int | None:
        """First epoch from which the mean correlation stays >= threshold; None if it never does."""
        ok = (self.mean_correlation(layer) >= self.threshold).tolist()
        for i in range(len(ok)):
            if all(ok[i:]):
                return self.epochs[i]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "threshold": self.threshold, "maps": self.maps,
                "projections": self.projections, "values": self.values, "indices": self.indices,
                "correlations": self.correlations}


def feature_evolution(
    models: Iterable[tuple[int, nn.Module]],
    loader: Iterable[Any],
    dataset: Any,
    maps: Mapping[str, Sequence[int]],
    *,
    threshold: float = 0.9,
    progress: bool = False,
) -> Evolution:
    """Fig. 4: the strongest activation of each chosen map at each checkpoint, projected.

    Args:
        models: ``(epoch, model)`` pairs in training order (a generator can load each checkpoint
            only when needed); each model on its device.
        loader: the dataset to search (``(images, labels, indices)`` batches, see
            :func:`convlens.topk.mining.mine_top_activations`); one pass per checkpoint.
        dataset: the same dataset, indexable (``dataset[i][0]`` is image i), for the projections.
        maps: layer -> channels to follow.
        threshold: correlation level that counts as "stopped changing".

    Example:
        >>> models = ((e, load_model(p).model) for e, p in find_checkpoints("runs/c10").items())
        >>> evo = feature_evolution(models, loader, ds, {"conv1": [0, 5], "conv5": [3]})
        >>> evo.mean_correlation("conv1"), evo.converged_epoch("conv5")
    """
    if not maps:
        raise ValueError("maps must name at least one layer, e.g. {'conv1': [0, 5]}")
    epochs: list[int] = []
    cols: dict[str, list[Any]] = {layer: [] for layer in maps}
    for epoch, model in models:
        log.info("epoch %d: mining %s", epoch, ", ".join(maps))
        tops = mine_top_activations(model, loader, list(maps), k=1, progress=progress)
        for layer, chans in maps.items():
            cols[layer].append(unit_tiles(model, dataset, tops[layer], list(chans)))
        epochs.append(epoch)
    if not epochs:
        raise ValueError("models is empty: give at least one (epoch, model) pair")
    proj = {layer: torch.stack([t.projections[:, 0] for t in ts], 1) for layer, ts in cols.items()}  # (M, E, 3, S, S)
    corr = {layer: torch.stack([pearson(p[:, e], p[:, e + 1]) for e in range(p.shape[1] - 1)], 1)
            if p.shape[1] > 1 else torch.empty(p.shape[0], 0, dtype=torch.float64) for layer, p in proj.items()}
    return Evolution(
        epochs=epochs,
        maps={layer: torch.as_tensor(list(chans)) for layer, chans in maps.items()},
        projections=proj,
        values={layer: torch.stack([t.values[:, 0] for t in ts], 1) for layer, ts in cols.items()},
        indices={layer: torch.stack([t.indices[:, 0] for t in ts], 1) for layer, ts in cols.items()},
        correlations=corr,
        threshold=threshold,
    )

