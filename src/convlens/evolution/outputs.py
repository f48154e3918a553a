"""What ``convlens evolution`` writes (Fig. 4), callable from Python.

:func:`write_evolution` picks ``maps`` random maps per layer (seeded), follows each one's
strongest activation through the chosen checkpoints, and writes ``<layer>_evolution.png`` per
layer and ``result.json`` (:func:`convlens.evolution.figures.write_evolution_outputs`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["random_maps", "write_evolution"]


def random_maps(loaded: Any, layers: Sequence[str], count: int, seed: int = 0) -> dict[str, list[int]]:
    """Per layer ``count`` maps drawn at random (seeded), sorted; the layers' widths are read from
    one forward of a blank image through ``loaded.model`` (put in eval mode).

    Example:
        >>> random_maps(load_model("runs/zf/checkpoints/last.pt"), ["conv1", "conv5"], 8)
    """
    from convlens.core.capture import capture

    size = loaded.preprocessing.crop
    device = next(loaded.model.parameters()).device
    shapes = capture(loaded.model.eval(), torch.zeros(1, 3, size, size, device=device), list(layers))
    gen = torch.Generator().manual_seed(seed)
    return {layer: sorted(torch.randperm(a.shape[1], generator=gen)[:count].tolist()) for layer, a in shapes.items()}


def write_evolution(out: str | Path, checkpoints: Mapping[int, str | Path], last: Any, loader: Iterable[Any],
                    ds: Any, maps: Mapping[str, Sequence[int]], *, threshold: float = 0.9, split: str = "train",
                    params: Mapping[str, Any] | None = None) -> Path:
    """Fig. 4: follow ``maps`` through ``checkpoints`` (epoch -> file, in training order) and write the figures.

    Args:
        out: output folder (created).
        checkpoints: the epochs to show and their checkpoint files (each loaded only when needed).
        last: the last checkpoint, loaded (its device is used for every checkpoint).
        loader: batches of ``ds`` (``(images, labels, indices)``); ds: the dataset, indexable.
        maps: layer -> channels to follow (:func:`random_maps`).
        threshold: correlation that counts as "stopped changing"; split: named in the summary.
        params: recorded as ``result.json`` ``params``.

    Returns:
        The path of ``result.json``.

    Example:
        >>> cks = find_checkpoints("runs/zf")
        >>> last = load_model(cks[max(cks)])
        >>> write_evolution("runs/zf/evolution", cks, last, loader, ds, random_maps(last, ["conv1"], 8))
    """
    from convlens.evolution.analysis import feature_evolution
    from convlens.evolution.figures import write_evolution_outputs
    from convlens.nets.loading import load_model

    device = next(last.model.parameters()).device
    models = ((e, load_model(p, map_location=device).model) for e, p in checkpoints.items())
    evo = feature_evolution(models, loader, ds, maps, threshold=threshold, progress=True)
    return write_evolution_outputs(evo, Path(out), num_images=len(ds), split=split, params=dict(params or {}))
