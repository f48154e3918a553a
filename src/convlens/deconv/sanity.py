"""Sanity check of projections (Adebayo et al. 2018): cascading weight randomization.

If a projection barely changes when the network's weights are replaced by random ones, it shows
the architecture, not what the network learned. :func:`sanity_check` re-draws the weights from the
unit's layer downwards, one group of layers at a time, projects the same units again and scores
the similarity to the trained projection (Spearman rank correlation of |map|, Pearson of the signed
map): high scores after randomization = the rule ignores the weights (a known weakness of guided
backprop at low layers); low scores = the projection depends on what was learned.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from convlens.core.capture import get_module
from convlens.deconv.project import Projection, _project, project_units

__all__ = ["SanityCheck", "sanity_check", "sanity_figure"]


@dataclass(frozen=True)
class SanityCheck:
    """Cascading weight randomization: how much a projection depends on the learned weights.

    Attributes:
        layers: the layer (or ``first..last`` group) re-drawn at each step; cumulative: after step
            i all of layers[:i+1] are random.
        spearman: (S, N, K) Spearman rank correlation of |projection| (summed over colour)
            between the trained and the randomized model, inside the unit's receptive field;
            near 1 = the map ignores the weights.
        pearson: (S, N, K) Pearson correlation of the signed projections (same region).
        original: the projection with the trained weights.
        randomized: (S, N, K, 3, H, W) the projections after each step.
    """

    layers: tuple[str, ...]
    spearman: torch.Tensor
    pearson: torch.Tensor
    original: Projection
    randomized: torch.Tensor

    def to_dict(self) -> dict[str, object]:
        return {"layers": list(self.layers), "spearman": self.spearman, "pearson": self.pearson,
                "spearman_mean": [_mean(s) for s in self.spearman], "pearson_mean": [_mean(p) for p in self.pearson]}


def _mean(t: torch.Tensor) -> float | None:
    t = t[~t.isnan()]
    return float(t.mean()) if t.numel() else None


def _weighted_layers(model: nn.Module, layer: str) -> list[str]:
    """Conv/linear modules the projection of ``layer`` depends on, from the top down."""
    if hasattr(model, "stages"):
        stop = model.resolve(layer)  # type: ignore[operator]
        names = []
        for name, m in model.stages():  # type: ignore[operator]
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                names.append(name)
            if name == stop:
                break
        return names[::-1]
    named = list(model.named_modules())
    last = max((i for i, (n, _) in enumerate(named) if n == layer or n.startswith(layer + ".")), default=len(named) - 1)
    return [n for n, m in named[:last + 1] if isinstance(m, (nn.Conv2d, nn.Linear))][::-1]


def _box_correlations(a: torch.Tensor, b: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_correlations` of (N, K, 3, H, W) maps inside each unit's box (N, K, 4): outside its
    receptive field a projection is zero whatever the weights, which would inflate the scores."""
    n, k = boxes.shape[:2]
    s, p = torch.empty(n, k, dtype=torch.float64), torch.empty(n, k, dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            y0, x0, y1, x1 = boxes[i, j].tolist()
            s[i, j], p[i, j] = _correlations(a[i, j, :, y0:y1, x0:x1], b[i, j, :, y0:y1, x0:x1])
    return s, p


def _correlations(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spearman of |maps| and Pearson of signed maps, per (N, K) item."""
    def corr(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        u, v = u - u.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
        return (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))  # nan for constant maps

    def ranks(u: torch.Tensor) -> torch.Tensor:
        """Ranks with ties averaged (sparse maps have many equal zeros; ordinal ranks would
        correlate through the tie order alone)."""
        u = u.double().contiguous()
        ordered = u.sort(-1).values
        lo = torch.searchsorted(ordered, u, right=False)
        hi = torch.searchsorted(ordered, u, right=True)
        return (lo + hi - 1).double() / 2

    sa, sb = a.abs().sum(-3).flatten(-2), b.abs().sum(-3).flatten(-2)
    return corr(ranks(sa), ranks(sb)), corr(a.flatten(-3).double(), b.flatten(-3).double())


def sanity_check(
    model: nn.Module, images: torch.Tensor, layer: str, units: torch.Tensor, *, rule: str = "deconvnet",
    seed: int = 0, steps: int | None = 8,
) -> SanityCheck:
    """Adebayo et al. (2018) cascading randomization for the projections of ``units``.

    Starting at ``layer`` and going down, each step re-draws one more conv/linear layer's weights
    (normal, same std as the trained weights, biases kept) in a deep copy of the model (the
    caller's model is never modified), projects the same units again (seeded with 1 rather than
    their now different activation, so that silenced units still give a map), and compares.

    Arguments as in :func:`project_units`; ``seed`` makes the randomization reproducible.
    ``steps`` caps the number of steps for deep nets (mobilenet_v2 has 50+ convs): the layers are
    then re-drawn in that many consecutive groups (``None``: one layer per step).

    Example:
        >>> sc = sanity_check(model, images, "conv5", torch.tensor([[42, 6, 6]]))
        >>> sc.spearman.mean(dim=(1, 2))   # one score per step; low = depends on the weights
    """
    original = project_units(model, images, layer, units, rule=rule)
    work = copy.deepcopy(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    names, maps, spear, pear = [], [], [], []
    layers = _weighted_layers(work, layer)
    n_steps = len(layers) if steps is None else max(1, min(steps, len(layers)))
    bounds = [round(i * len(layers) / n_steps) for i in range(n_steps + 1)]
    for group in (layers[a:b] for a, b in itertools.pairwise(bounds)):
        for name in group:
            weight: torch.Tensor = get_module(work, name).weight  # type: ignore[assignment]
            with torch.no_grad():
                noise = torch.randn(weight.shape, generator=gen, dtype=torch.float64)
                weight.copy_((noise * weight.double().std()).to(weight))
        name = group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}"
        # seeded with 1 (not the activation): a unit silenced by random weights still gets a map
        with warnings.catch_warnings():  # the same warnings as for ``original``
            warnings.simplefilter("ignore")
            proj = _project(work, images, layer, lambda act: original.units, original.rule, "one")
        s, p = _box_correlations(original.images, proj.images, original.boxes)
        names.append(name)
        maps.append(proj.images)
        spear.append(s)
        pear.append(p)
    return SanityCheck(tuple(names), torch.stack(spear), torch.stack(pear), original, torch.stack(maps))


def sanity_figure(sc: SanityCheck, *, image: int = 0, tile: int = 72) -> torch.Tensor:
    """The check as one labelled (3, H, W) image: one row per model (trained, then each cumulative
    randomization step, labelled with what was re-drawn and its mean Spearman score), one column
    per unit, each projection shown the one way of :mod:`convlens.deconv.view`, every row of a column
    in the box where the trained projection is)."""
    from convlens.deconv.view import CONTRAST, present, render
    from convlens.io.viz import make_grid, text_block, vstack

    boxes = [present(p, rf_box=b, size=tile).display_box
             for p, b in zip(sc.original.images[image], sc.original.boxes[image], strict=True)]

    def row(maps: torch.Tensor) -> torch.Tensor:
        tiles = [render(m, boxes[j], tile) for j, m in enumerate(maps)]
        return make_grid(torch.stack(tiles), nrow=len(tiles), pad=2)

    rows = [row(sc.original.images[image])] + [row(r[image]) for r in sc.randomized]
    means = [None] + [_mean(s[image]) for s in sc.spearman]
    labels = ["trained weights"] + [f"random weights down to {name.split('..')[-1]}" for name in sc.layers]
    width = 230
    parts = [text_block([f"{sc.original.layer}: {sc.original.rule} projections of {sc.original.units.shape[1]} units "
                         "(columns) as the weights are re-drawn from the top down (rows); "
                         "Spearman = rank correlation of |map| with the trained one (low = depends on the weights); "
                         f"each column cropped to where the trained projection is; {CONTRAST}"],
                        width + rows[0].shape[-1], size=12, pad=4, wrap=True)]
    for label, mean, r in zip(labels, means, rows, strict=True):
        score = "" if mean is None else f"Spearman {mean:.3f}"
        text = text_block([label, score], width, size=11, pad=4, wrap=True)
        canvas = r.new_ones(3, max(r.shape[-2], text.shape[-2]), width + r.shape[-1])
        canvas[:, :text.shape[-2], :width] = text
        canvas[:, :r.shape[-2], width:] = r
        parts.append(canvas)
    return vstack(parts, pad=2)
